"""Can a trained model read this features directory? (batch embedding, the API, evaluation)

Token ids are positions in one vocabulary and image features come from one backbone: a features
directory made for another model would silently feed the towers other tokens, so a mismatch is
an error, not a warning.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow.fs as pafs

from itemsage.data.features_io import resolve
from itemsage.data.text import Vocab
from itemsage.index.tower_udf import EmbedError
from itemsage.trained.loaded import TrainedModel


def is_features_dir(path: str) -> bool:
    """True when ``path`` holds a preprocessed features directory (manifest + items.parquet)."""
    fs, root = resolve(str(path))
    return all(
        fs.get_file_info(posixpath.join(root, name)).type == pafs.FileType.File
        for name in ("manifest.json", "items.parquet")
    )


def check_features_compatible(features: str, tm: TrainedModel) -> dict[str, Any]:
    """The features' manifest, after checking that the model can read its token ids and images.

    Token ids are positions in one vocabulary; ids written with another vocab would silently
    select other tokens' embeddings, so a mismatch is an error, not a warning.
    """
    fs, root = resolve(str(features))
    with fs.open_input_stream(posixpath.join(root, "manifest.json")) as f:
        manifest = json.loads(f.read().decode())
    if int(manifest.get("image_dim", -1)) != tm.image_dim:
        raise EmbedError(
            f"features {features} have {manifest.get('image_dim')}-d image features "
            f"({manifest.get('backbone')}); model {tm.uri} reads {tm.image_dim}-d ({tm.image_backbone})"
        )
    with fs.open_input_stream(posixpath.join(root, "vocab.json")) as f:
        raw = f.read()
    if raw != (tm.model_dir / "vocab.json").read_bytes() and Vocab.from_dict(json.loads(raw)) != tm.vocab:
        raise EmbedError(
            f"features {features} were tokenized with another vocabulary than model {tm.uri}; "
            "pass the raw catalog instead (it is then tokenized with the model's vocab)"
        )
    return manifest
