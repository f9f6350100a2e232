"""Which image-backbone weights file a trained model needs, and where that file is on this machine.

A model's item embeddings (and so every index built from them) were computed from frozen image
features of one weights file; closeup queries and new items must go through the same weights, or
queries and index no longer live in the same space. Preprocessing records the file in the
features manifest (``backbone_weights``: absolute path + SHA-256), training copies that record into
the model manifest (``image_weights``), and every consumer of a loaded model (Serve, the Python
API, batch embedding of a new catalog) resolves it here:

1. an explicit override (``serve.image_weights_path``; ``image_weights_path=`` in Python),
2. else ``$ITEMSAGE_IMAGE_WEIGHTS``,
3. else the path recorded at preprocessing time.

Overrides are for serving on another machine where the file lives elsewhere; they apply only to
models trained from a weights file (packaged weights need none). A file that is missing, or whose
SHA-256 differs from the recorded one, is an :class:`ImageWeightsError` that names the file and
the settings that fix it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from itemsage.config import PipelineConfig

ENV_VAR = "ITEMSAGE_IMAGE_WEIGHTS"
FIX_HINT = (
    f"set serve.image_weights_path (Serve), image_weights_path= (Python API) or ${ENV_VAR} "
    "to the weights file's location on this machine"
)


class ImageWeightsError(ValueError):
    """The image-backbone weights a model needs are missing here, or not the ones it was trained with."""


def recorded_image_weights(features_manifest: Mapping[str, Any], cfg: PipelineConfig) -> dict[str, Any] | None:
    """The ``image_weights`` entry of a model manifest: the features manifest's ``backbone_weights``.

    Features written before that field existed: the ``image.weights_path`` of the preprocessing
    config the features manifest embeds, else of the training config when it names the same
    backbone (no checksum then).
    """
    if "backbone_weights" in features_manifest:
        record = features_manifest["backbone_weights"]
        return dict(record) if record else None
    image = (features_manifest.get("config") or {}).get("image") or {}
    path = image.get("weights_path")
    if path is None and cfg.preprocess.image.backbone == features_manifest.get("backbone"):
        path = cfg.preprocess.image.weights_path
    return {"path": str(path), "sha256": None} if path else None


# SHA-256 of files already checked, by (path, size, mtime): hashing ~100 MB per request would cost
# more than the backbone forward.
_checked: dict[tuple[str, int, int], str] = {}
_checked_lock = threading.Lock()


def _sha256(path: Path) -> str:
    from itemsage.data.images import file_sha256

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _checked_lock:
        if key not in _checked:
            _checked[key] = file_sha256(path)
        return _checked[key]


def resolve_image_weights(
    manifest: Mapping[str, Any], model: str, override: str | None = None, legacy_path: str | None = None
) -> str | None:
    """The local weights file for the image backbone of the model whose manifest is ``manifest``.

    None means the backbone's packaged weights. ``model`` names the model in error messages.
    ``legacy_path``: the bundle config's ``preprocess.image.weights_path``, used for manifests
    written before ``image_weights`` existed.
    """
    # Here, not at the top: the bundle writer imports this module, and torch stays out of the
    # processes that only read manifests (Serve's Ingress and Retriever).
    from itemsage.data.images import BACKBONES

    backbone = str(manifest.get("image_backbone", ""))
    record = manifest.get("image_weights")
    if record is None and "image_weights" not in manifest and legacy_path:
        record = {"path": legacy_path, "sha256": None}
    needs_file = backbone in BACKBONES and BACKBONES[backbone].needs_weights_path
    if not record and not needs_file:
        return None  # packaged weights: nothing to find or to check
    chosen = override or os.environ.get(ENV_VAR) or None
    recorded = str(record["path"]) if record else None
    path = chosen or recorded
    if path is None:
        raise ImageWeightsError(
            f"model {model} uses image backbone {backbone!r}, which needs a weights file, and its manifest "
            f"records none; {FIX_HINT}"
        )
    if "://" in path:
        return path  # a URI: read (and failed on) by the backbone loader
    p = Path(path).expanduser()
    if not p.is_file():
        source = "the override" if chosen else "the path recorded at preprocessing"
        raise ImageWeightsError(
            f"model {model} needs the {backbone} weights file {p} ({source}), which does not exist on this "
            f"machine; {FIX_HINT}"
        )
    expected = record.get("sha256") if record else None
    if expected and _sha256(p) != expected:
        raise ImageWeightsError(
            f"{p} is not the {backbone} weights file model {model} was trained with (sha256 {_sha256(p)[:12]}..., "
            f"expected {str(expected)[:12]}...): its image features, and the index built from them, came from "
            f"{recorded}; {FIX_HINT}"
        )
    return str(p.absolute())
