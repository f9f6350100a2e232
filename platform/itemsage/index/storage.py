"""On-disk layout of a saved index, and the file operations that make saving atomic.

A saved index is a directory: the vector payload (``index.faiss`` or ``vectors.npy``),
``ids.json`` (the id map) and ``metadata.json`` (spec, dim, ntotal, search params, model
name/version, timestamps, sweep result, and the size + SHA-256 of every file). It is written to
a staging directory beside the target, fsynced, and renamed into place (``itemsage.files``); a failed
write (full disk, unwritable directory) raises ``IndexWriteError`` naming the target and leaves an
index already there untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
IDS_FILE = "ids.json"


class CorruptIndexError(ValueError):
    """A saved index's files are unreadable, truncated or inconsistent with its metadata."""


class IndexWriteError(OSError):
    """An index could not be saved (disk full, directory not writable, ...); the cause's errno is
    kept, the message names the target directory."""


def write_error(target: Path, e: OSError) -> IndexWriteError:
    why = e.strerror or str(e)
    message = f"cannot save index to {target}: {why}"
    return IndexWriteError(e.errno, message) if e.errno is not None else IndexWriteError(message)


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256: enough to tell a truncated or bit-flipped file from the one written."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def check_replaceable(target: Path) -> None:
    """Refuse to save over anything but nothing, an empty directory, or a saved index."""
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"cannot save an index to {target}: it exists and is not a directory")
    if any(target.iterdir()) and not (target / METADATA_FILE).is_file():
        raise FileExistsError(
            f"refusing to replace {target}: it is a non-empty directory without {METADATA_FILE}, "
            "so it is not an index saved by ItemIndex.save"
        )


def read_metadata(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``metadata.json`` of a saved index, with clear errors for a missing or unreadable one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no index at {directory}: the directory does not exist")
    path = directory / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no index at {directory}: {METADATA_FILE} is missing (not an index directory)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptIndexError(f"{path} is not valid JSON ({e}); the index is corrupt") from e
    if not isinstance(meta, dict) or not {"kind", "spec", "dim", "ntotal", "files"} <= set(meta):
        raise CorruptIndexError(f"{path} lacks required fields; the index is corrupt")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorruptIndexError(
            f"{path} has format_version {meta.get('format_version')!r}; this code reads {FORMAT_VERSION}"
        )
    return meta


def verify_files(directory: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Every file named in ``meta["files"]`` exists with its recorded size and SHA-256."""
    directory = Path(directory)
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise CorruptIndexError(f"{directory / METADATA_FILE} lists no files; the index is corrupt")
    for name, expected in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CorruptIndexError(f"{directory / METADATA_FILE} names a file outside the index: {name!r}")
        if not isinstance(expected, dict):
            raise CorruptIndexError(f"{directory / METADATA_FILE}: bad entry for {name!r}")
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"index at {directory} is incomplete: {name} is missing")
        actual = file_digest(path)
        if actual != expected:
            raise CorruptIndexError(
                f"index file {path} is corrupt: {actual['bytes']} bytes / sha256 {actual['sha256'][:12]}..., "
                f"metadata says {expected['bytes']} bytes / sha256 {str(expected['sha256'])[:12]}..."
            )
