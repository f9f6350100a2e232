"""itemsage.api.catalog and experiments/sync_catalog.py: write to and sync a local index's live
catalog (tiny serving setup: random model, Flat index over 60 sample items)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from itemsage.api.catalog import LocalCatalog, connect, sync_catalog
from itemsage.config import LiveConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    sys.path.insert(0, str(REPO / "tests" / "serve"))
    from tiny import build_tiny_serving

    return build_tiny_serving(sample_dir, tmp_path_factory.mktemp("tiny_api"), versions=1)


def write_catalog(tiny: dict[str, Path], out: Path, drop: int = 2, retitle: int = 1, new: int = 2) -> Path:
    """The served catalog as a generic JSONL file, with the first ``drop`` items left out, the
    next ``retitle`` retitled and ``new`` new text-only items."""
    rows = pq.read_table(tiny["features"] / "catalog.parquet").to_pylist()
    rows = rows[drop:]
    for r in rows[:retitle]:
        r["title"] = r["title"] + " (new season)"
    rows += [{"item_id": f"fresh-{i}", "title": f"fresh item {i}", "colors": "teal"} for i in range(new)]
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return out


def test_sync_adds_updates_deletes_and_is_then_a_no_op(tiny: dict[str, Path], tmp_path: Path) -> None:
    catalog = write_catalog(tiny, tmp_path / "catalog.jsonl")
    with connect(tiny["index_1"], model=str(tiny["model_1"]), live=LiveConfig(dir=str(tmp_path / "live"))) as target:
        assert isinstance(target, LocalCatalog)
        dry = sync_catalog(target, catalog, dry_run=True)
        assert (dry.added, dry.updated, dry.deleted, dry.unchanged) == (2, 1, 2, 57)
        assert target.status()["head_seq"] == 0  # a dry run writes nothing
        done = sync_catalog(target, catalog)
        assert (done.added, done.updated, done.deleted) == (
            2,
            1,
            2,
        ) and done.seq == 5  # 3 upserts in one transaction, then 2 deletes
        served = target.item_digests()
        assert {"fresh-0", "fresh-1"} <= set(served) and len(served) == 60
        again = sync_catalog(target, catalog, dry_run=True)
        assert (again.added, again.updated, again.deleted, again.unchanged) == (0, 0, 0, 60)
    # A new process on the same index and live dir (a server restart) sees the synced catalog.
    with connect(tiny["index_1"], model=str(tiny["model_1"]), live=LiveConfig(dir=str(tmp_path / "live"))) as again:
        assert again.item_digests() == served


def test_upsert_and_delete_from_python(tiny: dict[str, Path], tmp_path: Path) -> None:
    with LocalCatalog(tiny["index_1"], str(tiny["model_1"]), live=LiveConfig(dir=str(tmp_path))) as cat:
        out = cat.upsert_items([{"item_id": "py-1", "title": "linen summer dress", "colors": "white"}])
        assert out == {"upserted": 1, "seq": 1}
        assert "py-1" in cat.item_digests()
        # Its similar items, as /similar answers them: this index has no lexical index, so dense.
        similar = cat.similar("py-1", k=5)
        assert similar["mode"] == "dense" and len(similar["results"]) == 5
        assert "py-1" not in [h["item_id"] for h in similar["results"]]
        assert cat.delete_items(["py-1"]) == {"deleted": 1, "seq": 2}
        with pytest.raises(Exception, match="unknown item id 'py-1'"):
            cat.delete_items(["py-1"])
        assert cat.status()["applied_seq"] == 2


def test_cli_dry_run_prints_counts(tiny: dict[str, Path], tmp_path: Path) -> None:
    catalog = write_catalog(tiny, tmp_path / "catalog.jsonl", drop=1, retitle=0, new=3)
    cmd = [
        sys.executable,
        str(REPO / "experiments" / "sync_catalog.py"),
        str(catalog),
        "--index",
        str(tiny["index_1"]),
        "--model",
        str(tiny["model_1"]),
        "--live-dir",
        str(tmp_path / "live"),
        "--dry-run",
    ]
    env = {
        "PYTHONPATH": str(REPO / "platform"),
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.strip().splitlines()[-1] == "would add 3, would update 0, would delete 1; unchanged 59, skipped 0"
    )
    bad = subprocess.run([*cmd[:3], "--index", "x"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--index needs --model" in bad.stderr
