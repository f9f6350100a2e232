"""Saving and loading: version/dimension checks, missing and corrupt files, atomic saves."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

import itemsage.index.base as base
from itemsage.index import CorruptIndexError, IndexMismatchError, build_index, load_index, read_metadata
from itemsage.index.storage import file_digest


@pytest.fixture()
def saved(catalog, tmp_path: Path) -> Path:
    index = build_index(catalog.x[:300], catalog.ids[:300], "Flat", use_gpu=False, model_name="m", model_version=2)
    return index.save(tmp_path / "idx")


def _rewrite_digest(directory: Path, name: str) -> None:
    meta = json.loads((directory / "metadata.json").read_text())
    meta["files"][name] = file_digest(directory / name)
    (directory / "metadata.json").write_text(json.dumps(meta))


def test_metadata_contents(saved: Path) -> None:
    meta = read_metadata(saved)
    assert meta["spec"] == "Flat" and meta["dim"] == 32 and meta["ntotal"] == 300
    assert meta["model_name"] == "m" and meta["model_version"] == "2"
    assert meta["metric"] == "inner_product" and meta["created_at"] and meta["search_params"] == {}
    assert set(meta["files"]) == {"index.faiss", "ids.json"}


def test_refuses_other_model_version_or_dim(saved: Path) -> None:
    with pytest.raises(IndexMismatchError, match=r"model 'm' version '2', but version '5' was expected"):
        load_index(saved, expected_model_version=5)
    with pytest.raises(IndexMismatchError, match="dimension 32, but 256 was expected"):
        load_index(saved, expected_dim=256)
    assert load_index(saved, expected_dim=32, expected_model_version=2, use_gpu=False).ntotal == 300


def test_unversioned_index_is_refused_when_a_version_is_expected(catalog, tmp_path: Path) -> None:
    path = build_index(catalog.x[:50], catalog.ids[:50], "Flat", use_gpu=False).save(tmp_path / "i")
    with pytest.raises(IndexMismatchError, match="version None"):
        load_index(path, expected_model_version="1")


def test_missing_index(tmp_path: Path, saved: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_index(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="metadata.json is missing"):
        load_index(tmp_path / "empty")
    (saved / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete: index.faiss is missing"):
        load_index(saved)


def test_truncated_file_is_reported_as_corrupt(saved: Path) -> None:
    data = (saved / "index.faiss").read_bytes()
    (saved / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptIndexError, match="index.faiss is corrupt"):
        load_index(saved)


def test_flipped_bytes_are_reported_as_corrupt(saved: Path) -> None:
    data = bytearray((saved / "ids.json").read_bytes())
    data[10] ^= 0xFF
    (saved / "ids.json").write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="ids.json is corrupt"):
        load_index(saved)


def test_unreadable_faiss_file_is_corrupt_even_with_matching_digest(saved: Path) -> None:
    (saved / "index.faiss").write_bytes(b"not a faiss index at all" * 10)
    _rewrite_digest(saved, "index.faiss")
    with pytest.raises(CorruptIndexError, match="cannot be read by FAISS"):
        load_index(saved)


def test_garbage_metadata_is_corrupt(saved: Path) -> None:
    (saved / "metadata.json").write_text("{ not json")
    with pytest.raises(CorruptIndexError, match="not valid JSON"):
        load_index(saved)
    (saved / "metadata.json").write_text(json.dumps({"kind": "faiss"}))
    with pytest.raises(CorruptIndexError, match="lacks required fields"):
        load_index(saved)


def test_inconsistent_id_map_is_corrupt(saved: Path) -> None:
    ids = json.loads((saved / "ids.json").read_text())
    ids["item_ids"], ids["labels"] = ids["item_ids"][:-1], ids["labels"][:-1]
    (saved / "ids.json").write_text(json.dumps(ids))
    _rewrite_digest(saved, "ids.json")
    with pytest.raises(CorruptIndexError, match="id map has 299 items, metadata says 300"):
        load_index(saved)


@pytest.mark.parametrize("where", ["payload", "fsync", "rename"])
def test_failed_save_leaves_nothing_behind(where: str, catalog, tmp_path: Path, monkeypatch) -> None:
    index = build_index(catalog.x[:100], catalog.ids[:100], "Flat", use_gpu=False)

    def boom(*args, **kwargs):
        raise OSError(f"simulated failure during {where}")

    if where == "payload":
        monkeypatch.setattr(faiss, "write_index", boom)
    elif where == "fsync":
        monkeypatch.setattr(base, "fsync_dir", boom)
    else:
        monkeypatch.setattr(base, "publish_dir", boom)
    with pytest.raises(OSError, match="simulated"):
        index.save(tmp_path / "idx")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_index(catalog, saved: Path, monkeypatch) -> None:
    bigger = build_index(catalog.x[:400], catalog.ids[:400], "Flat", use_gpu=False)
    monkeypatch.setattr(base, "fsync_file", lambda path: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        bigger.save(saved)
    assert [p.name for p in saved.parent.iterdir()] == ["idx"]
    assert load_index(saved, use_gpu=False).ntotal == 300


def test_save_replaces_an_existing_index(catalog, saved: Path) -> None:
    build_index(catalog.x[:400], catalog.ids[:400], "IVF8,Flat", use_gpu=False).save(saved)
    loaded = load_index(saved, use_gpu=False)
    assert (loaded.spec, loaded.ntotal) == ("IVF8,Flat", 400)
    assert [p.name for p in saved.parent.iterdir()] == ["idx"]  # the old copy was deleted


def test_save_refuses_to_clobber_a_foreign_directory(catalog, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    index = build_index(catalog.x[:10], catalog.ids[:10], "Flat", use_gpu=False)
    with pytest.raises(FileExistsError, match="refusing to replace"):
        index.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_torch_exact_round_trip_and_corruption(catalog, tmp_path: Path) -> None:
    index = build_index(catalog.x[:200], catalog.ids[:200], "TorchExact", use_gpu=False, model_version=1)
    index.remove(catalog.ids[:10])
    path = index.save(tmp_path / "t")
    loaded = load_index(path, expected_model_version=1, use_gpu=False)
    assert loaded.ntotal == 190
    np.testing.assert_array_equal(loaded.search(catalog.queries, 5)[1], index.search(catalog.queries, 5)[1])
    (path / "vectors.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CorruptIndexError):
        load_index(path)
