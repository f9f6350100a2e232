"""The features directory an evaluation reads: as given, a catalog preprocessed the way the model
reads it (its preprocessing config, re-tokenized with its vocabulary), or the model's own."""

from __future__ import annotations

import json
import posixpath
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from itemsage.config import TEXT_FIELDS
from itemsage.data.features_io import resolve
from itemsage.data.features_read import read_manifest
from itemsage.files import StagingDir, staging_dir
from itemsage.index.featurize import model_preprocess_config, token_table
from itemsage.trained.loaded import TrainedModel


class EvalError(ValueError):
    """The evaluation cannot run as asked (conflicting or missing inputs)."""


def retokenize_features(features: str, tm: TrainedModel) -> None:
    """Rewrite a features directory's token ids (and vocab.json) with the model's vocabulary.

    Preprocessing builds a vocabulary from the catalog it reads; a model can only read ids of its
    own vocabulary. Token ids are a pure function of the catalog text and the vocab, so they are
    recomputed from ``catalog.parquet``; image features and MiniLM embeddings do not depend on
    the vocab and stay as they are.
    """
    fs, root = resolve(features)
    items = pq.read_table(posixpath.join(root, "items.parquet"), filesystem=fs)
    catalog = pq.read_table(
        posixpath.join(root, "catalog.parquet"), filesystem=fs, columns=list(TEXT_FIELDS)
    ).to_pandas()
    tokens = token_table(catalog, tm.vocab, None)
    for name in TEXT_FIELDS:
        col = f"tok_{name}"
        items = items.set_column(items.schema.get_field_index(col), col, tokens.column(col))
    pq.write_table(items, posixpath.join(root, "items.parquet"), filesystem=fs)
    with fs.open_output_stream(posixpath.join(root, "vocab.json")) as f:
        f.write((tm.model_dir / "vocab.json").read_bytes())
    manifest = read_manifest(features)
    manifest.update(vocab_sizes=tm.vocab.sizes, vocab_size=tm.vocab.size, vocab_from=tm.uri)
    with fs.open_output_stream(posixpath.join(root, "manifest.json")) as f:
        f.write((json.dumps(manifest, indent=2) + "\n").encode())


def featurize_for_model(
    catalog: str, tm: TrainedModel, output: str, layout: str = "auto", engagements: str | None = None
) -> str:
    """Preprocess ``catalog`` into the features directory ``output`` the way ``tm`` reads it.

    Runs the real preprocessing (``itemsage.data.pipeline.run_preprocess``, Ray Data) with the
    model's preprocessing config, then :func:`retokenize_features`; ``output`` is replaced only
    when both succeeded. Returns ``output``.
    """
    from itemsage.data.pipeline import run_preprocess

    stage: StagingDir
    with staging_dir(output) as stage:
        run_preprocess(model_preprocess_config(tm, catalog, layout, engagements=engagements or "", output=stage.uri))
        retokenize_features(stage.uri, tm)
    return output


def trained_on(features: str, tm: TrainedModel) -> bool:
    """Is ``features`` the directory ``tm`` was trained on? Only then are its train pairs the
    model's, so that a held-out item can be called seen or unseen. The two are reported apart
    because a model learns the popularity of the items it was trained on and a new item cannot
    have it."""
    mine = str(tm.manifest.get("features") or "")
    if not mine:
        return False
    if "://" in features or "://" in mine:
        return features.rstrip("/") == mine.rstrip("/")
    return Path(features).resolve() == Path(mine).resolve()


def features_for(
    tm: TrainedModel,
    catalog: str | None,
    features: str | None,
    layout: str,
    engagements: str | None,
    features_out: str | None,
    scratch: list[str],
) -> str:
    """The features directory to evaluate on: ``features`` as given, ``catalog`` preprocessed for
    the model into ``features_out`` (a temporary directory, added to ``scratch`` for the caller to
    remove, when not given), or else the directory the model was trained on."""
    if catalog and features:
        raise EvalError("give either a catalog or a features directory, not both")
    if features:
        if engagements:
            raise EvalError("engagements are read when featurizing a catalog; a features directory has its pairs")
        return features
    if catalog:
        if not features_out:
            features_out = str(Path(tempfile.mkdtemp(prefix="itemsage-eval-")) / "features")
            scratch.append(str(Path(features_out).parent))
        return featurize_for_model(catalog, tm, features_out, layout, engagements)
    own = tm.manifest.get("features")
    if not own:
        raise EvalError(f"model {tm.uri} names no features directory; pass a catalog or features")
    return str(own)


__all__ = ["EvalError", "featurize_for_model", "features_for", "retokenize_features", "trained_on"]
