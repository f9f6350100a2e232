"""Frozen-backbone outputs of the bundled sample, computed once per test run.

The in-process model builds (``tests.api.sample_model.preprocess_in_process``: the sample model,
the fine-tuned sample model, the trained serving model, the demo-config run of
tests/train/test_sample_run.py) all run EfficientNet over images of ``data/sample/fashion`` and
MiniLM over its titles and queries, with the same frozen weights: 920 images in a ``make test`` run
of which 300 differ, and image featurization on one CPU thread is most of a build's preprocessing
(37 of 49 s for the sample model's 160 items). The outputs depend only on the input (a file, or a
string) and the backbone, so :func:`image_features` and :func:`text_embeddings` compute each
input once per run and keep the results, per input, in a directory the run's pytest-xdist workers
share (:func:`cache_dir`, set by tests/conftest.py), under a file lock: a worker that needs what
the other is computing waits for it instead of computing it beside it. Without that directory (a
script, a plain import) they compute everything, as the functions they wrap do.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ENV = "ITEMSAGE_TEST_FEATURE_CACHE"


def cache_dir() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also on an error
        yield


def _load(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # readers only ever see a whole file


def _image_key(path: str) -> str:
    st = os.stat(path) if os.path.exists(path) else None
    return f"{path}\0{st.st_size if st else -1}\0{st.st_mtime_ns if st else -1}"


def image_features(items: Any, pcfg: Any, dim: int) -> Any:
    """``itemsage.index.featurize.local_image_features(items, pcfg, dim, "cpu")``, with every
    image's backbone output (or decode failure) taken from the run's cache when it is there."""
    from itemsage.data.featurize import ImageFeaturizer, decode_images, image_rows
    from itemsage.data.pipeline import group_image_features
    from itemsage.index.featurize import local_image_features

    root = cache_dir()
    rows = image_rows(items)
    if root is None or rows.empty:
        return local_image_features(items, pcfg, dim, "cpu")
    im = pcfg.image
    tag = hashlib.sha256(f"{im.backbone}\0{im.weights_path}\0{im.max_pixels}".encode()).hexdigest()[:16]
    keys = [_image_key(p) for p in rows["path"]]
    with _locked(root / f"images-{tag}.lock"):
        store = root / f"images-{tag}.npz"
        cached = _load(store)
        known = {k: i for i, k in enumerate(cached.get("key", np.zeros(0, str)).tolist())}
        todo = sorted({keys.index(k) for k in keys if k not in known})
        if todo:
            featurizer = ImageFeaturizer(im.backbone, im.weights_path, False, im.num_threads)
            sub = rows.iloc[todo]
            parts = []
            for start in range(0, len(sub), im.batch_size):
                chunk = sub.iloc[start : start + im.batch_size]
                batch = {c: chunk[c].to_numpy() for c in chunk.columns}
                parts.append(featurizer(decode_images(batch, im.backbone, im.max_pixels)))
            new = {k: np.concatenate([p[k] for p in parts]) for k in ("ok", "feat", "reason", "detail")}
            new["key"] = np.asarray([keys[i] for i in todo], dtype=str)
            if cached:
                new = {k: np.concatenate([cached[k], new[k]]) for k in new}
            _save(store, new)
            cached = new
            known = {k: i for i, k in enumerate(cached["key"].tolist())}
    at = np.asarray([known[k] for k in keys])
    out = {c: rows[c].to_numpy() for c in ("item_idx", "item_id", "img_pos", "path")}
    out.update({k: cached[k][at] for k in ("ok", "feat", "reason", "detail")})
    return group_image_features(out, len(items), dim)


def text_embeddings(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    """``encoder.encode(texts)`` (a frozen ``TextEncoder``), each distinct string encoded once per
    run and kept in the run's cache."""
    root = cache_dir()
    texts = [str(t) for t in texts]
    if root is None or not texts:
        return encoder.encode(texts)
    with _locked(root / "text-minilm.lock"):
        store = root / "text-minilm.npz"
        cached = _load(store)
        known = {t: i for i, t in enumerate(cached.get("text", np.zeros(0, str)).tolist())}
        todo = list(dict.fromkeys(t for t in texts if t not in known))
        if todo:
            new = {"text": np.asarray(todo, dtype=str), "emb": np.asarray(encoder.encode(todo), np.float32)}
            if cached:
                new = {k: np.concatenate([cached[k], new[k]]) for k in new}
            _save(store, new)
            cached = new
            known = {t: i for i, t in enumerate(cached["text"].tolist())}
    return cached["emb"][np.asarray([known[t] for t in texts], dtype=np.int64)].reshape(len(texts), -1)
