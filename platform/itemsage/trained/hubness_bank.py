"""Store the catalog's item embeddings in a bundle, for hubness-corrected scores (``model.hubness_weight``).

The correction (:mod:`itemsage.model.hubness`) needs every item's nearest catalog neighbours, so
the catalog's embeddings travel with the weights (buffer ``hubness_bank`` in ``model.safetensors``):
evaluation, the Python API and Serve then score with the very same bank, and an item added later
is corrected against it without re-embedding the catalog. Training attaches the bank to the
bundle it registers (:func:`itemsage.train.trainer.run_training`); :func:`hubness_variant` makes
a corrected copy of an already trained bundle (``experiments/hubness_bank.py``), and
:func:`scoring_variant` a copy with any scoring-only setting changed (``experiments/scoring_variant.py``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from itemsage.config import dump_config
from itemsage.model import ItemFeatureStore
from itemsage.model.factory import build_checks
from itemsage.model.hubness import bank_rows
from itemsage.trained.bundle import load_bundle_config
from itemsage.trained.registry import MANIFEST_FILE, WEIGHTS_FILE

BANK_BATCH = 1024  # items per item-tower batch while embedding the bank


def attach_hubness_bank(bundle_dir: str | Path, features: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Embed the catalog of ``features`` (default: the features directory the model was trained
    on) with the bundle's item tower and store it as the model's hubness bank, in place.

    Only items' catalog features are read, never engagement: new products in the catalog count
    like the ones training saw. Returns what is recorded under ``hubness_bank`` in the manifest.
    """
    from safetensors.torch import save_file

    from itemsage.trained.loaded import load_trained

    d = Path(bundle_dir)
    if not (d / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{d} is not a model bundle (no {WEIGHTS_FILE}); write_bundle a checkpoint first")
    tm = load_trained(d, device="cpu")
    mcfg = tm.config.train.model
    if mcfg.hubness_weight <= 0:
        raise ValueError(f"{d} has model.hubness_weight {mcfg.hubness_weight}: nothing would read a hubness bank")
    source = features or str(tm.manifest["features"])
    store = ItemFeatureStore.load(source, max_images=tm.max_images, text_fields=tm.text_fields)
    rows = bank_rows(store.num_items, mcfg.hubness_bank_size, seed)
    model = tm.model.eval()
    model.set_hubness_bank(model.embed_store_rows(store, rows, BANK_BATCH))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(d / WEIGHTS_FILE))
    record = {"items": int(rows.numel()), "catalog_items": int(store.num_items), "features": source, "seed": seed}
    manifest = json.loads((d / MANIFEST_FILE).read_text())
    manifest["embedding_dim"] = model.output_dim
    manifest["hubness_bank"] = record
    (d / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return record


def hubness_variant(
    src: str | Path, out_dir: str | Path, weight: float, neighbors: int, features: str | None = None
) -> dict[str, Any]:
    """Copy the bundle ``src`` to ``out_dir`` with ``model.hubness_weight`` / ``hubness_neighbors``
    set in its config (recorded with the model) and the catalog bank attached."""
    scoring_variant(src, out_dir, {"hubness_weight": float(weight), "hubness_neighbors": int(neighbors)}, features)
    return dict(json.loads((Path(out_dir) / MANIFEST_FILE).read_text())["hubness_bank"])


# Model settings read only when scoring (evaluation, the Python API, Serve), never by training:
# a trained model can switch them without retraining.
SCORING_FIELDS: tuple[str, ...] = (
    "popularity_debias",
    "hubness_weight",
    "hubness_neighbors",
    "title_blend",
    "closeup_neighbors",
    "home_query",
)


def scoring_variant(
    src: str | Path, out_dir: str | Path, changes: Mapping[str, Any], features: str | None = None
) -> dict[str, Any]:
    """Copy the bundle ``src`` to ``out_dir`` with the scoring-only model settings ``changes``
    (:data:`SCORING_FIELDS`, e.g. ``{"title_blend": 0.5}``) recorded in its config; with a hubness
    weight the catalog bank is embedded again when the hubness settings change (from ``features``,
    default the model's training features). Returns the new model config's changed fields."""
    unknown = sorted(set(changes) - set(SCORING_FIELDS))
    if unknown:
        raise ValueError(
            f"model.{unknown[0]} is not a scoring-only setting (retrain to change it); "
            f"a variant can set {', '.join(SCORING_FIELDS)}"
        )
    s, d = Path(src), Path(out_dir)
    if d.exists():
        raise FileExistsError(f"{d} exists; choose a new directory for the variant bundle")
    cfg = load_bundle_config(s)
    before = cfg.train.model
    model = before.replace(**dict(changes))
    build_checks(model)
    shutil.copytree(s, d)
    dump_config(cfg.replace(train=cfg.train.replace(model=model)), d / "config.yaml")
    hubness_changed = (model.hubness_weight, model.hubness_neighbors) != (
        before.hubness_weight,
        before.hubness_neighbors,
    )
    if model.hubness_weight > 0 and (features is not None or hubness_changed or before.hubness_weight <= 0):
        attach_hubness_bank(d, features)
    manifest = json.loads((d / MANIFEST_FILE).read_text())
    manifest["embedding_dim"] = model.served_dim()
    (d / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return {k: getattr(model, k) for k in changes}
