"""itemsage.files: the one atomic-write helper (files and directories, local paths and URIs).

The callers' own failure tests (tests/train/test_storage_faults.py, tests/index/test_index_storage.py,
tests/data/test_text.py, tests/data/test_preprocess.py) cover full disks and refused directories;
here: the helper's contract on its own, including the object-store path of a directory swap.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from itemsage.files import StagingDir, publish_dir, staged_files, staging_dir, write_atomic


def test_write_atomic_local_and_uri(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a" / "x.json", "new")
    write_atomic(f"file://{tmp_path}/y.bin", b"\x00\x01")
    assert (tmp_path / "a" / "x.json").read_text() == "new"
    assert (tmp_path / "y.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json"]  # no temp file left


def test_staged_files_replace_all_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("old a")
    with pytest.raises(RuntimeError, match="boom"), staged_files(tmp_path) as stage:
        stage.write("a", lambda f: f.write(b"new a"))
        stage.write("b", lambda f: (_ for _ in ()).throw(RuntimeError("boom")))
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and (tmp_path / "a").read_text() == "old a"
    with staged_files(tmp_path) as stage:
        stage.write("a", lambda f: f.write(b"new a"))
        stage.write("b", lambda f: f.write(b"b"))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a": "new a", "b": "b"}


def test_staging_dir_replaces_the_target_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "f").write_text("1")
    with pytest.raises(KeyboardInterrupt), staging_dir(str(target)) as stage:
        Path(stage.path("f")).write_text("2")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "f").read_text() == "1"
    with staging_dir(str(target)) as stage:
        assert Path(stage.uri).parent == tmp_path and Path(stage.uri).name.startswith(".out.tmp-")
        Path(stage.path("g")).write_text("2")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in target.iterdir()] == ["g"]


def test_failed_swap_puts_the_old_directory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "f").write_text("1")
    stage = StagingDir.beside(target)
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        if src == stage.staging:
            raise OSError(5, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="Input/output"):
        stage.commit()
    monkeypatch.undo()
    stage.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "f").read_text() == "1"


def test_directory_swap_on_a_non_local_filesystem(tmp_path: Path) -> None:
    """The object-store branch (``fs.move`` instead of ``os.rename``), on a pyarrow filesystem that
    is not ``LocalFileSystem``."""
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    fs.create_dir("out/sub")
    fs.create_dir("staging")
    with fs.open_output_stream("staging/f") as f:
        f.write(b"new")
    publish_dir("staging", "out", fs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "f").read_bytes() == b"new"
