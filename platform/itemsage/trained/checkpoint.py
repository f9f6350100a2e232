"""Training checkpoints: everything a restarted worker group needs to continue exactly where it was.

A checkpoint directory holds ``state.pt`` (model incl. the count-min sketch buffers, fine-tuned
text-encoder layers if any, optimizer, scheduler, step, MLflow run id; plain tensors and dicts written with ``torch.save`` and read back
with ``weights_only=True``, so loading a checkpoint never runs pickled code) and ``meta.json`` (step,
run id and metrics, readable without torch). It also carries the inference bundle files
(``config.yaml``, ``vocab.json``, ``manifest.json``), so any checkpoint directory is itself loadable by
:func:`itemsage.trained.load_trained`.

Writes are atomic per file (``itemsage.files.staged_files``): each goes to a temp file in the same
directory, is fsynced, and is renamed over the old one only once both files are complete. A full disk or an unwritable
directory therefore raises :class:`CheckpointWriteError` naming the directory, and leaves a
previous checkpoint there intact and loadable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # imported where used: resolving a model reference (no torch) reads these files' names
    import torch

from itemsage.files import staged_files

STATE_FILE = "state.pt"
META_FILE = "meta.json"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, directory not writable, ...).

    An ``OSError`` with the cause's errno (``ENOSPC``, ``EROFS``, ``EACCES``), so callers can tell
    a full disk from a permission problem; the message names the checkpoint directory.
    """


@dataclass
class TrainState:
    """What :func:`save_checkpoint` writes and :func:`load_checkpoint` returns."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # Fine-tuned MiniLM layers (model.finetune_text_layers > 0); empty when the encoder is frozen.
    text_encoder: dict[str, torch.Tensor] = field(default_factory=dict)


def save_checkpoint(directory: str | Path, state: TrainState) -> None:
    """Write ``state.pt`` and ``meta.json`` into ``directory`` (created if needed), atomically.

    Raises :class:`CheckpointWriteError` when the files cannot be written (disk full, no
    permission); what was in ``directory`` before is then unchanged and no temp file is left.
    Only a failure between the two renames could pair a new ``state.pt`` with the old
    ``meta.json``; loading takes the step from ``state.pt``.
    """
    d = Path(directory)
    payload: dict[str, Any] = {
        "step": int(state.step),
        "model": {k: v.detach().cpu() for k, v in state.model.items()},
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        # weights_only loading accepts str but not None inside nested containers in every torch
        # version; "" means "no run".
        "mlflow_run_id": state.mlflow_run_id or "",
        "text_encoder": {k: v.detach().cpu() for k, v in state.text_encoder.items()},
    }
    meta = {"step": int(state.step), "mlflow_run_id": state.mlflow_run_id, "metrics": state.metrics}
    meta_bytes = (json.dumps(meta, indent=2) + "\n").encode()
    try:
        # Both files are complete and on disk before either replaces its old version.
        with staged_files(d) as stage:
            stage.write(STATE_FILE, lambda f: _torch_save(payload, f))
            stage.write(META_FILE, lambda f: f.write(meta_bytes))
    except OSError as e:
        message = f"cannot write checkpoint {d}: {e.strerror or e}"
        raise (CheckpointWriteError(e.errno, message) if e.errno is not None else CheckpointWriteError(message)) from e


class _RecordingWriter:
    """A file for ``torch.save`` that remembers the OSError of a failed write.

    torch's zip writer does not pass a write error on: a full disk surfaces as a RuntimeError
    about an "unexpected pos". The recorded OSError lets us report the real cause.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def _torch_save(payload: dict[str, Any], f: IO[bytes]) -> None:
    import torch

    writer = _RecordingWriter(f)
    try:
        # A file-like object, not an IO subclass: torch only calls write() and flush().
        torch.save(payload, cast(IO[bytes], writer))
    except RuntimeError as e:
        if writer.error is not None:
            raise writer.error from e
        raise


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> TrainState:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors only: ``weights_only=True``)."""
    d = Path(directory)
    path = d / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{d} is not a training checkpoint (no {STATE_FILE})")
    import torch

    payload = torch.load(path, map_location=map_location, weights_only=True)
    meta = read_meta(d)
    return TrainState(
        step=int(payload["step"]),
        model=payload["model"],
        optimizer=payload.get("optimizer", {}),
        scheduler=payload.get("scheduler", {}),
        mlflow_run_id=payload.get("mlflow_run_id") or None,
        metrics=dict(meta.get("metrics", {})),
        text_encoder=payload.get("text_encoder", {}),
    )


def read_meta(directory: str | Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint (``{}`` when absent)."""
    path = Path(directory) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def latest_checkpoint_dir(run_dir: str | Path) -> Path | None:
    """The highest-step checkpoint directory under a Ray Train run directory, if any."""
    best: tuple[int, Path] | None = None
    for d in Path(run_dir).glob("checkpoint_*"):
        if (d / STATE_FILE).is_file():
            step = int(read_meta(d).get("step", -1))
            if best is None or step > best[0]:
                best = (step, d)
    return best[1] if best else None
