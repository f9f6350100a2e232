"""Untrusted request payloads made safe to use: base64 uploads and server-local image paths.

Kept free of torch so the Ingress, which checks uploads before anything reaches a model, stays a
light process.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Sequence

from itemsage.serve.errors import ForbiddenPathError, InvalidImageError, PayloadTooLargeError


def decode_base64(data: str, max_bytes: int) -> bytes:
    """Strict base64 (a ``data:...;base64,`` prefix is accepted) -> bytes, size-checked first."""
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    data = "".join(data.split())  # line-wrapped base64 is common
    # 4 characters carry 3 bytes: refuse oversize uploads before allocating the decoded copy.
    if len(data) // 4 * 3 > max_bytes + 3:
        raise PayloadTooLargeError(f"image is larger than the {max_bytes}-byte upload limit")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError("image is not valid base64") from None
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(f"image is {len(raw)} bytes; the upload limit is {max_bytes}")
    if not raw:
        raise InvalidImageError("image is empty")
    return raw


def read_allowed_file(path: str, allowed_roots: Sequence[str], max_bytes: int) -> bytes:
    """Bytes of a server-local file that lies (after resolving symlinks) under an allowed root.

    The check runs on the real path, so ``..`` segments and symlinks pointing out of a root are
    refused like any other outside path.
    """
    if not allowed_roots:
        raise ForbiddenPathError("local image paths are disabled on this server (no allowed roots)")
    if "\x00" in path or not os.path.isabs(path):
        raise ForbiddenPathError("image paths must be absolute paths under an allowed root")
    real = os.path.realpath(path)
    roots = [os.path.realpath(r) for r in allowed_roots]
    if not any(os.path.commonpath([real, r]) == r for r in roots):
        raise ForbiddenPathError(f"image path {path!r} is outside the allowed roots")
    try:
        st = os.stat(real)
    except OSError:
        raise InvalidImageError(f"image path {path!r} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidImageError(f"image path {path!r} is not a regular file")
    if st.st_size > max_bytes:
        raise PayloadTooLargeError(f"image file is {st.st_size} bytes; the limit is {max_bytes}")
    with open(real, "rb") as f:
        return f.read(max_bytes + 1)
