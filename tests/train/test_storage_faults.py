"""Storage faults while saving a training checkpoint or a retrieval index (issue 9, item 5).

A full disk or an unwritable directory must give one clear error that names the path (an
``OSError`` keeping the cause's errno), and the checkpoint / index saved there before must stay
intact and loadable, with no temp files left behind.

Faults are real where the machine allows: writes that reach ``/dev/full`` fail with a real
ENOSPC from the kernel, through the same file objects the savers use. The last test runs the
savers on a real 2 MiB tmpfs and a real read-only bind mount, in a private mount namespace
(``unshare -m``; root only, skipped elsewhere).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from itemsage.index import IndexWriteError, build_index, load_index
from itemsage.trained.checkpoint import (
    META_FILE,
    STATE_FILE,
    CheckpointWriteError,
    TrainState,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux) for a real ENOSPC")


def state(step: int, numel: int = 1000) -> TrainState:
    return TrainState(step=step, model={"w": torch.full((numel,), float(step))},
                      optimizer={"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
                      mlflow_run_id=f"run{step}", metrics={"loss": 1.0 / step})


def assert_checkpoint(d: Path, step: int) -> None:
    """``d`` holds exactly the checkpoint of ``step``, loadable, and nothing else."""
    loaded = load_checkpoint(d)
    assert loaded.step == step and loaded.mlflow_run_id == f"run{step}"
    assert torch.equal(loaded.model["w"], state(step, loaded.model["w"].numel()).model["w"])
    assert read_meta(d)["step"] == step
    assert sorted(p.name for p in d.iterdir()) == [META_FILE, STATE_FILE]  # no temp files left


def _to_dev_full(fd: int) -> None:
    """Point an open file descriptor at /dev/full: every write to it fails with ENOSPC."""
    full = os.open(DEV_FULL, os.O_WRONLY)
    try:
        os.dup2(full, fd)
    finally:
        os.close(full)


# ----------------------------------------------------------------------------- checkpoints


def test_save_replaces_a_checkpoint_with_only_its_two_files_fsynced(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "ckpt"
    save_checkpoint(d, state(1))
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    save_checkpoint(d, state(2))
    assert_checkpoint(d, 2)
    assert len(synced) >= 3  # both files and the directory (so the renames survive a crash)


@needs_dev_full
@pytest.mark.parametrize("full_at", [STATE_FILE, META_FILE])
def test_disk_full_keeps_the_previous_checkpoint(full_at: str, tmp_path: Path, monkeypatch) -> None:
    """The disk fills up while ``full_at`` is written; state.pt is large enough (512 KiB) that
    the failure happens inside torch.save, which on its own reports only "unexpected pos"."""
    d = tmp_path / "ckpt"
    save_checkpoint(d, state(1, numel=128 * 1024))
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        if Path(path).name.startswith(f".{full_at}."):
            _to_dev_full(fd)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(CheckpointWriteError) as err:
        save_checkpoint(d, state(2, numel=128 * 1024))
    assert err.value.errno == errno.ENOSPC and str(d) in str(err.value)
    monkeypatch.undo()
    assert_checkpoint(d, 1)  # untouched: state.pt is only replaced once meta.json is written too


def test_unwritable_directory_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """Creating a file in the directory is refused (tests run as root, where chmod does not bite;
    the real read-only mount is in the namespace test below)."""
    d = tmp_path / "ckpt"
    save_checkpoint(d, state(1))

    def refuse(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own keyword
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointWriteError) as err:
        save_checkpoint(d, state(2))
    assert err.value.errno == errno.EACCES and str(d) in str(err.value)
    monkeypatch.undo()
    assert_checkpoint(d, 1)


def test_failed_rename_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "ckpt"
    save_checkpoint(d, state(1))

    def fail(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(CheckpointWriteError, match="cannot write checkpoint") as err:
        save_checkpoint(d, state(2))
    assert err.value.errno == errno.EIO and str(d) in str(err.value)
    monkeypatch.undo()
    assert_checkpoint(d, 1)


def test_checkpoint_dir_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    d = tmp_path / "a-file" / "ckpt"
    with pytest.raises(CheckpointWriteError) as err:
        save_checkpoint(d, state(1))
    assert str(d) in str(err.value)
    assert (tmp_path / "a-file").read_text() == "not a directory"


# ----------------------------------------------------------------------------------- indexes


def vectors(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), [f"item{i}" for i in range(n)]


def assert_index(target: Path, n: int, spec: str) -> None:
    loaded = load_index(target, use_gpu=False)
    assert (loaded.spec, loaded.ntotal) == (spec, n)
    x, ids = vectors(n)
    assert [row[0] for row in loaded.search(x[:5], 1)[0]] == ids[:5]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp or old copies


@needs_dev_full
@pytest.mark.parametrize(("spec", "full_at"), [
    ("Flat", "index.faiss"), ("Flat", "ids.json"), ("Flat", "metadata.json"), ("TorchExact", "vectors.npy"),
])
def test_disk_full_keeps_the_previous_index(spec: str, full_at: str, tmp_path: Path, monkeypatch) -> None:
    """The disk fills up while ``full_at`` is written. faiss.write_index and np.save given a path
    drop that error (a truncated file would then be swapped in); the savers must see it."""
    target = tmp_path / "idx"
    build_index(*vectors(50), spec, use_gpu=False).save(target)
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        tmp = real_mkdtemp(*args, **kwargs)
        os.symlink(DEV_FULL, Path(tmp) / full_at)  # the writer opens it and writes to /dev/full
        return tmp

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(IndexWriteError) as err:
        build_index(*vectors(80), spec, use_gpu=False).save(target)
    assert err.value.errno == errno.ENOSPC and str(target) in str(err.value)
    monkeypatch.undo()
    assert_index(target, 50, spec)


def test_unwritable_directory_keeps_the_previous_index(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "idx"
    build_index(*vectors(50), "Flat", use_gpu=False).save(target)

    def refuse(*args, dir=None, **kwargs):  # noqa: A002
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(IndexWriteError) as err:
        build_index(*vectors(80), "Flat", use_gpu=False).save(target)
    assert err.value.errno == errno.EACCES and str(target) in str(err.value)
    monkeypatch.undo()
    assert_index(target, 50, "Flat")


def test_failed_swap_puts_the_previous_index_back(tmp_path: Path, monkeypatch) -> None:
    """The old index was moved aside and the new one fails to move in: the old one returns."""
    target = tmp_path / "idx"
    build_index(*vectors(50), "Flat", use_gpu=False).save(target)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".idx.tmp-"):
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(IndexWriteError) as err:
        build_index(*vectors(80), "Flat", use_gpu=False).save(target)
    assert err.value.errno == errno.EIO and str(target) in str(err.value)
    monkeypatch.undo()
    assert_index(target, 50, "Flat")


# --------------------------------------------------- real full and read-only file systems

CHILD = r"""
import errno, json, subprocess, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_storage_faults import assert_checkpoint, assert_index, state, vectors
from itemsage.index import IndexWriteError, build_index
from itemsage.trained.checkpoint import CheckpointWriteError, save_checkpoint

root = Path(sys.argv[1])
ckpt, idx = root / "ckpt", root / "space" / "idx"
save_checkpoint(ckpt, state(1, numel=1000))
build_index(*vectors(50), "Flat", use_gpu=False).save(idx)
out = {}

def attempt(name, fn, error):
    try:
        fn()
        out[name] = "no error"
    except error as e:
        out[name] = [errno.errorcode.get(e.errno, e.errno), str(e)]

# 1 M floats = 4 MiB: more than the 2 MiB file system holds.
attempt("checkpoint/full", lambda: save_checkpoint(ckpt, state(2, numel=1_000_000)), CheckpointWriteError)
attempt("index/full", lambda: build_index(*vectors(40_000), "Flat", use_gpu=False).save(idx), IndexWriteError)
assert_checkpoint(ckpt, 1)
assert_index(idx, 50, "Flat")
subprocess.run(["mount", "-o", "remount,ro,bind", str(root)], check=True)
attempt("checkpoint/read-only", lambda: save_checkpoint(ckpt, state(3)), CheckpointWriteError)
attempt("index/read-only", lambda: build_index(*vectors(60), "Flat", use_gpu=False).save(idx), IndexWriteError)
assert_checkpoint(ckpt, 1)
assert_index(idx, 50, "Flat")
print("RESULT " + json.dumps(out))
"""


def _can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


def test_real_full_disk_and_read_only_mount_keep_what_was_saved(tmp_path: Path) -> None:
    if not _can_unshare():
        pytest.skip("needs root and mount namespaces (unshare -m) for a real tmpfs and read-only mount")
    root = tmp_path / "fs"
    root.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # The tmpfs and the read-only remount live in the child's own mount namespace only.
    cmd = (f"mount -t tmpfs -o size=2m tmpfs {root} && mkdir {root}/space && "
           f"mount --bind {root} {root} && exec {sys.executable} {script} {root} {Path(__file__).parent}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    print(json.dumps(result, indent=1))
    assert result["checkpoint/full"][0] == "ENOSPC" and str(root / "ckpt") in result["checkpoint/full"][1]
    assert result["index/full"][0] == "ENOSPC" and str(root / "space" / "idx") in result["index/full"][1]
    assert result["checkpoint/read-only"][0] == "EROFS" and str(root / "ckpt") in result["checkpoint/read-only"][1]
    assert result["index/read-only"][0] == "EROFS" and str(root / "space" / "idx") in result["index/read-only"][1]
