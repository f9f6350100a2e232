"""One configuration on several item-disjoint splits of the catalog, each trained with seeds.

On a small catalog one test split holds few distinct engaged items (Amazon's 10 % test split: 77
linked products, two of them a third of the pairs), so a figure moves more with the split than
with the seed, and a setting that wins on val can lose on test. The split is a hash of each item's
id seeded by ``preprocess.engagement.seed``: another seed holds out other items. Each split seed
other than the configuration's own is preprocessed into ``<train.features>_split<N>`` (kept and
reused while its preprocessing configuration is unchanged) and trained under
``<train.storage_path>/split<N>``; the configuration's own split uses its features (made first
if missing) and runs as they are. Only the features differ, so every split's models share one
configuration hash, and their evaluations carry the split seed read from the features (tag
``itemsage.split_seed``): ``experiments/quality_report.py`` reports the mean and spread over
splits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from itemsage.config import PipelineConfig, PreprocessConfig, load_config, to_dict
from itemsage.data.features_read import FeaturesError, read_manifest
from itemsage.studies.seeds import SeedRun, run_seeds


def split_features(features: str, split_seed: int, own_seed: int) -> str:
    """Where a split's features live: the configured directory for the configuration's own split
    seed, ``<features>_split<N>`` for another."""
    return features if split_seed == own_seed else f"{features.rstrip('/')}_split{split_seed}"


def split_preprocess_config(
    base: str | Path | None, overrides: Sequence[str], split_seed: int
) -> tuple[PipelineConfig, PreprocessConfig]:
    """The configuration with ``overrides``, and the preprocessing that makes split ``split_seed``
    (the same one, engagement seed and output changed)."""
    cfg = load_config(PipelineConfig, base, list(overrides))
    own = cfg.preprocess.engagement.seed
    out = split_features(cfg.train.features, split_seed, own)
    pre = cfg.preprocess.replace(engagement=cfg.preprocess.engagement.replace(seed=split_seed), output=out)
    return cfg, pre


def _made_config(features: str) -> dict[str, Any] | None:
    """The preprocessing configuration recorded by a finished preprocess output (local or remote),
    its output aside; None where there is none."""
    try:
        made = dict(read_manifest(features).get("config") or {})
    except FeaturesError:
        return None
    made.pop("output", None)
    return made


def run_splits(
    base: str | Path | None,
    overrides: Sequence[str],
    split_seeds: Sequence[int],
    seeds: Sequence[int],
    progress: Callable[[str], None] = print,
    **seed_kwargs: Any,
) -> dict[int, list[SeedRun]]:
    """Preprocess (where needed), train and evaluate ``base`` on each split, once per seed.
    ``seed_kwargs`` go to :func:`itemsage.studies.seeds.run_seeds` (split, tracking, ...)."""
    from itemsage.data.pipeline import run_preprocess

    if len(set(split_seeds)) != len(split_seeds) or not split_seeds:
        raise ValueError(f"split seeds must be distinct and at least one, got {list(split_seeds)}")
    out = {}
    for i, n in enumerate(split_seeds, 1):
        cfg, pre = split_preprocess_config(base, overrides, n)
        own = n == cfg.preprocess.engagement.seed
        made = _made_config(pre.output)
        wanted = {k: v for k, v in to_dict(pre).items() if k != "output"}
        # The configuration's own features are used as they are once they exist (they may have
        # been made by hand); another split's are remade when their preprocessing changed.
        if made is not None and (own or made == wanted):
            progress(f"split {n} ({i}/{len(split_seeds)}): features {pre.output} (kept)")
        else:
            progress(f"split {n} ({i}/{len(split_seeds)}): preprocessing into {pre.output}")
            run_preprocess(pre)
        extra: list[str] = []
        if not own:
            storage = f"{cfg.train.storage_path.rstrip('/')}/split{n}"
            extra = [f"train.features={pre.output}", f"train.storage_path={storage}"]
        out[n] = run_seeds(base, [*overrides, *extra], seeds, progress=progress, **seed_kwargs)
    return out
