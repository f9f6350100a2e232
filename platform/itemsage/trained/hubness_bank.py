"""Store the catalog's item embeddings in a bundle, for hubness-corrected scores (``model.hubness_weight``).

The correction (:mod:`itemsage.model.hubness`) needs every item's nearest catalog neighbours, so
the catalog's embeddings travel with the weights (buffer ``hubness_bank`` in ``model.safetensors``):
evaluation, the Python API and Serve then score with the very same bank, and an item added later
is corrected against it without re-embedding the catalog. Training attaches the bank to the
bundle it registers (:func:`itemsage.train.trainer.run_training`);
:func:`~itemsage.trained.variant.hubness_variant` makes a corrected copy of an already trained bundle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from itemsage.model import ItemFeatureStore
from itemsage.model.hubness import bank_rows
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
