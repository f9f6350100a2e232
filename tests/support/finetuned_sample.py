"""A model trained on the bundled sample with a fine-tuned search-query encoder
(``train.model.finetune_text_layers: 1``), for tests that need the SearchSage-style path for real.

Same catalog, features and in-process training as the shared sample model
(``tests/api/sample_model.py``: the preprocessing functions with their model stages run in this
process, the plain training loop of ``itemsage.train.plain``), with the top MiniLM layer trained
and saved in the checkpoint and bundle as training does. Call
:func:`build_finetuned_sample_model` with a directory; it is built once per process and directory.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from tests.api.sample_model import (
    MODEL_OVERRIDES,
    N_TRAIN,
    SAMPLE,
    one_torch_thread,
    preprocess_in_process,
    write_generic_catalog,
)

# Enough steps to move the fine-tuned layer well away from the packaged MiniLM (its learning rate
# is a tenth of the towers'), few enough to train in about a minute on one core.
STEPS = 40
FINETUNE_OVERRIDES = ["train.model.finetune_text_layers=1", f"train.max_steps={STEPS}", "train.lr=0.01"]


@dataclass(frozen=True)
class FinetunedSample:
    features: Path  # features directory of the training catalog
    checkpoint: Path  # training checkpoint (state.pt incl. the fine-tuned layer + bundle files)
    bundle: Path  # inference bundle (model.safetensors + text_encoder.safetensors + ...)
    config_overrides: tuple[str, ...]


_lock = threading.Lock()
_built: dict[Path, FinetunedSample] = {}


def build_finetuned_sample_model(root: Path) -> FinetunedSample:
    """Preprocess the first sample items and train a fine-tuned-encoder model under ``root``."""
    import torch

    from itemsage.config import PipelineConfig, load_config
    from itemsage.data.catalog import read_catalog
    from itemsage.train.plain import run_steps, setup_plain
    from itemsage.trained.bundle import write_bundle
    from itemsage.trained.checkpoint import TrainState, save_checkpoint

    root = Path(root)
    with _lock:
        if root in _built:
            return _built[root]
        torch.manual_seed(0)
        items = read_catalog(SAMPLE).items
        catalog = write_generic_catalog(items.iloc[:N_TRAIN], root / "catalog" / "items.jsonl")
        features = root / "features"
        overrides = (
            f"preprocess.catalog={catalog.parent}",
            f"preprocess.output={features}",
            f"train.features={features}",
            f"train.storage_path={root / 'runs'}",
            *MODEL_OVERRIDES,
            *FINETUNE_OVERRIDES,
        )
        cfg = load_config(PipelineConfig, None, list(overrides))
        with one_torch_thread():
            preprocess_in_process(cfg.preprocess)
            run = setup_plain(cfg)
            outs, _ = run_steps(run, cfg.train.max_steps)
            if not outs[-1].finite:
                raise RuntimeError("the fine-tuned sample model diverged")
            ckpt = root / "model" / "checkpoint_000"
            save_checkpoint(ckpt, TrainState(step=run.step, model=run.model.state_dict(),
                                             text_encoder=run.module.text_encoder_state()))
            run.bundle.write(ckpt, run.step, {})
            bundle = write_bundle(ckpt, root / "model" / "bundle")
        _built[root] = FinetunedSample(features, ckpt, bundle, overrides)
        return _built[root]
