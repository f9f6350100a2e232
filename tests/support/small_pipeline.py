"""A whole small pipeline run on one bundled sample: preprocess -> train -> embed -> Flat index.

For end-to-end tests of a data path (a catalog layout, an image backbone) through to serving:
preprocessing is the pipeline's own functions with their model stages run in this process
(``tests/api/sample_model.preprocess_in_process``, so the features directory has the documented
format and the image features come from the configured backbone and weights), training the plain
loop of ``itemsage.train.plain`` for a few steps, and the index a Flat index over every item's
embedding under the trained model, labelled with its version. Quality is not the point: a few
dozen steps are enough for a model whose every tower has been through the real code.

:func:`build_small_pipeline` builds once per process and directory.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.api.sample_model import MODEL_OVERRIDES, one_torch_thread, preprocess_in_process, train_in_process

# Few steps, small batches: the catalogs here have a few dozen items.
STEPS = 20
SMALL_OVERRIDES = (
    *MODEL_OVERRIDES,
    f"train.max_steps={STEPS}",
    "train.batch_size=32",
    "train.warmup_steps=2",
    "train.loss.num_random_negatives=16",
    "preprocess.engagement.search_pairs=300",
    "preprocess.engagement.closeup_pairs=300",
    "preprocess.engagement.home_pairs=200",
    "preprocess.engagement.num_users=30",
    # Small catalogs: a larger held-out share keeps every split non-empty.
    "preprocess.engagement.val_fraction=0.2",
    "preprocess.engagement.test_fraction=0.2",
)


@dataclass(frozen=True)
class SmallPipeline:
    catalog: Path  # the catalog preprocessing read
    features: Path  # its features directory
    bundle: Path  # the trained model's bundle
    index: Path  # Flat index over every item of ``features`` under ``bundle``
    version: str  # the bundle's version label (what the index was built for)

    @property
    def serving(self) -> dict[str, str]:
        """The ``user_config`` that serves this model and index."""
        return {"model_uri": str(self.bundle), "index_uri": str(self.index), "features": str(self.features)}


_lock = threading.Lock()
_built: dict[Path, SmallPipeline] = {}


def build_small_pipeline(catalog: Path, root: Path, overrides: Sequence[str] = ()) -> SmallPipeline:
    """Preprocess ``catalog`` (``preprocess.*`` overrides pick its layout, backbone, ...), train a
    small model and index its items, all under ``root``."""
    import torch

    from itemsage.config import PipelineConfig, load_config
    from itemsage.index import build_index
    from itemsage.model import ItemFeatureStore
    from itemsage.trained import load_trained

    root = Path(root)
    with _lock:
        if root in _built:
            return _built[root]
        torch.manual_seed(0)
        features = root / "features"
        cfg = load_config(
            PipelineConfig,
            None,
            [
                f"preprocess.catalog={catalog}",
                f"preprocess.output={features}",
                f"train.features={features}",
                f"train.storage_path={root / 'runs'}",
                *SMALL_OVERRIDES,
                *overrides,
            ],
        )
        with one_torch_thread():
            preprocess_in_process(cfg.preprocess)
            _, bundle = train_in_process(cfg, root / "model")
            tm = load_trained(bundle)
            store = ItemFeatureStore.load(str(features), max_images=tm.max_images, text_fields=tm.text_fields)
            index = build_index(
                tm.embed_items(store), list(store.item_ids or []), "Flat", use_gpu=False, model_version=tm.version
            )
        index.save(root / "index")
        _built[root] = SmallPipeline(Path(catalog), features, bundle, root / "index", tm.version)
        return _built[root]
