"""MLflow tracking from rank 0 that never stops training.

Ray Train V2 has no MLflow callback, so the rank-0 worker logs itself through an explicit-run-id
``MlflowClient`` (no global "active run": a restarted worker simply resumes the run id it finds in the
checkpoint). Tracking is a side channel: when the server is down or the database is unwritable,
:class:`Tracker` warns once, appends every call to a local JSONL file and keeps going; it retries the
server now and then and replays the buffered calls when it answers again.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# Loading a model resolves the tracking URI too, so the resolver lives below training.
from itemsage.trained.registry import resolve_tracking_uri as resolve_tracking_uri

# MLflow's HTTP client retries for minutes by default; a tracker that must not stall training wants
# an unreachable server to fail in seconds (users can still override both through the environment).
_FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_BATCH_METRICS = 1000  # MLflow's limit per log_batch call
_BATCH_PARAMS = 100


def default_artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside the SQLite file, else the server's default.

    Without this, MLflow puts SQLite-backed artifacts under ``./mlruns`` of whichever process first
    creates the experiment, which for a Ray worker is not the user's directory.
    """
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        if not db.is_absolute():
            db = Path("/" + str(db))
        return (db.parent / "mlruns").resolve().as_uri()
    return None


def flat_params(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params are strings of bounded length; lists and dicts become compact JSON."""
    out = {}
    for k, v in params.items():
        text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
        out[k] = text[:_MAX_PARAM_CHARS]
    return out


# Error codes of a request MLflow received and refused; anything else (connection errors, timeouts,
# 5xx, a locked or unwritable database) means "unreachable".
_REJECTED_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_STATE",
    "BAD_REQUEST",
}


def _rejected(err: BaseException) -> bool:
    return getattr(err, "error_code", None) in _REJECTED_CODES


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Tracker:
    """Buffered MLflow logging for one run, with a JSONL fallback when MLflow is unreachable.

    Args:
        tracking_uri: resolved MLflow tracking URI (see :func:`resolve_tracking_uri`).
        experiment: experiment name; created (with :func:`default_artifact_location`) if missing.
        fallback_path: local JSONL file that receives every call made while MLflow is unreachable.
        enabled: False makes every method a no-op (non-zero ranks, benchmarks).
        flush_every: metrics are sent in one ``log_batch`` per this many ``log_metrics`` calls; one
            round trip per step would cost a visible share of a small model's step time.
        retry_after_s: while offline, how often to probe the server again.
        warn: False suppresses the "unreachable" warning (another process already printed it).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        fallback_path: str | Path,
        enabled: bool = True,
        flush_every: int = 20,
        retry_after_s: float = 120.0,
        warn: bool = True,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.fallback_path = Path(fallback_path)
        self.enabled = enabled
        self.flush_every = max(int(flush_every), 1)
        self.retry_after_s = retry_after_s
        self.run_id: str | None = None
        self.online = True
        self._warned = not warn
        self._rejected_kinds: set[str] = set()
        self._last_probe = 0.0
        self._pending: list[Any] = []
        self._calls_since_flush = 0
        self._run_name: str | None = None
        self._run_tags: dict[str, str] = {}
        self._client: Any = None
        if enabled and tracking_uri.startswith(("http://", "https://")):
            for k, v in _FAST_FAIL_ENV.items():
                os.environ.setdefault(k, v)

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _go_offline(self, what: str, err: BaseException) -> None:
        self.online = False
        self._last_probe = time.monotonic()
        if not self._warned:
            self._warned = True
            msg = (
                f"MLflow at {self.tracking_uri} is unreachable ({what}: {type(err).__name__}: "
                f"{str(err).splitlines()[0][:200] if str(err) else ''}); training continues and "
                f"tracking calls are buffered in {self.fallback_path}"
            )
            # stderr, not logging: Ray forwards a worker's stderr to the driver whatever logging setup
            # the worker has, and logging's last-resort handler would print it a second time.
            print(f"WARNING: {msg}", file=sys.stderr, flush=True)

    def _buffer(self, kind: str, data: Any, step: int | None = None) -> None:
        self.fallback_path.parent.mkdir(parents=True, exist_ok=True)
        rec = {"time": time.time(), "run_id": self.run_id, "kind": kind, "step": step, "data": data}
        with self.fallback_path.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    def _call(self, kind: str, data: Any, fn: Callable[[], None], step: int | None = None) -> None:
        """Run ``fn`` against MLflow, or buffer ``(kind, data)`` locally when MLflow is down."""
        if not self.enabled:
            return
        if not self.online:
            self._maybe_reconnect()
        if self.online:
            try:
                fn()
                return
            except Exception as e:  # noqa: BLE001 - any tracking failure must not kill training
                if _rejected(e):
                    self._warn_rejected(kind, e)
                    return
                self._go_offline(kind, e)
        self._buffer(kind, data, step)

    def _warn_rejected(self, kind: str, err: BaseException) -> None:
        """MLflow answered but refused the request (a bad name, an immutable param): retrying or
        buffering cannot help, so warn once per kind and drop the call."""
        if kind in self._rejected_kinds:
            return
        self._rejected_kinds.add(kind)
        msg = f"MLflow rejected a {kind} call: {str(err).splitlines()[0][:300]}"
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)

    def _maybe_reconnect(self) -> None:
        if time.monotonic() - self._last_probe < self.retry_after_s:
            return
        self._last_probe = time.monotonic()
        try:
            self._ensure_run()
            self.online = True
        except Exception:  # noqa: BLE001
            return
        self._replay()

    def _ensure_run(self) -> None:
        """Create the experiment and run if they do not exist yet (also used to probe the server)."""
        client = self.client
        if self.run_id is not None:
            client.get_run(self.run_id)
            return
        exp_id = ensure_experiment(client, self.experiment, self.tracking_uri)
        run = client.create_run(exp_id, run_name=self._run_name, tags=self._run_tags or None)
        self.run_id = run.info.run_id

    def _replay(self) -> None:
        """Send what was buffered while offline; a marker file makes replay happen at most once."""
        marker = self.fallback_path.with_suffix(".replayed")
        done = int(marker.read_text()) if marker.exists() else 0
        if not self.fallback_path.exists():
            return
        with self.fallback_path.open() as f:
            f.seek(done)
            lines = f.read()
        for line in lines.splitlines():
            rec = json.loads(line)
            kind, data, step = rec["kind"], rec["data"], rec["step"]
            if kind == "metrics":
                self._send_metrics(self._metric_entities(data, step, rec["time"]))
            elif kind == "params":
                self._send_params(data)
            elif kind == "tags":
                self._send_tags(data)
            elif kind == "artifact" and Path(data["path"]).exists():
                self._send_artifact(data["path"], data["artifact_path"])
        marker.write_text(str(done + len(lines.encode())))

    # ------------------------------------------------------------------ senders

    @staticmethod
    def _metric_entities(metrics: Mapping[str, float], step: int | None, at: float) -> list[Any]:
        from mlflow.entities import Metric

        ts = int(at * 1000)
        return [Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items()]

    def _send_metrics(self, entities: list[Any]) -> None:
        for chunk in _chunks(entities, _BATCH_METRICS):
            self.client.log_batch(self.run_id, metrics=chunk)

    def _send_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for chunk in _chunks(items, _BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=chunk)

    def _send_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _send_artifact(self, path: str, artifact_path: str | None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, path, artifact_path)
        else:
            self.client.log_artifact(self.run_id, path, artifact_path)

    # ------------------------------------------------------------------ public API

    def start(
        self, run_id: str | None = None, run_name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str | None:
        """Resume ``run_id`` or create a new run; returns the run id (None while MLflow is down)."""
        if not self.enabled:
            return None
        self.run_id = run_id
        self._run_name = run_name
        self._run_tags = {k: str(v) for k, v in (tags or {}).items()}
        try:
            self._ensure_run()
        except Exception as e:  # noqa: BLE001
            self._go_offline("start run", e)
            self._buffer("start", {"run_id": run_id, "run_name": run_name, "tags": self._run_tags})
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flat_params(params)
        self._call("params", flat, lambda: self._send_params(flat))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        flat = {k: str(v) for k, v in tags.items()}
        self._call("tags", flat, lambda: self._send_tags(flat))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue one step's metrics; they go out every ``flush_every`` calls or on :meth:`flush`."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._pending.append((clean, int(step), time.time()))
        self._calls_since_flush += 1
        if self._calls_since_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.enabled or not self._pending:
            return
        pending, self._pending, self._calls_since_flush = self._pending, [], 0
        if not self.online:
            self._maybe_reconnect()
        if self.online:
            try:
                entities = [e for m, s, t in pending for e in self._metric_entities(m, s, t)]
                self._send_metrics(entities)
                return
            except Exception as e:  # noqa: BLE001
                if _rejected(e):
                    self._warn_rejected("metrics", e)
                    return
                self._go_offline("log metrics", e)
        for m, s, _ in pending:
            self._buffer("metrics", m, s)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a directory (under ``artifact_path``)."""
        path = str(local_path)
        self._call(
            "artifact",
            {"path": path, "artifact_path": artifact_path},
            lambda: self._send_artifact(path, artifact_path),
        )

    def end(self, status: str = "FINISHED") -> None:
        """Flush and mark the run terminated (FINISHED | FAILED | KILLED)."""
        if not self.enabled:
            return
        self.flush()
        if self.run_id is not None:
            run_id = self.run_id
            self._call("end", {"status": status}, lambda: self.client.set_terminated(run_id, status))


def ensure_experiment(client: Any, name: str, tracking_uri: str) -> str:
    """The experiment id of ``name``, creating it (artifacts beside a SQLite DB) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))
    except Exception:  # noqa: BLE001 - lost a creation race with another process: use theirs
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
