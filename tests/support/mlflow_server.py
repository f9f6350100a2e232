"""``mlflow server`` with a database backend store and a local artifact root, on 127.0.0.1.

Artifacts go through the server (``--serve-artifacts``, ``mlflow-artifacts:/`` URIs), so Ray workers
on any node log and load models over HTTP with nothing but ``MLFLOW_TRACKING_URI``, as on KubeRay.
The backend URI (it holds the database password) reaches the server through its environment, not
its command line, where every user of the machine could read it in ``ps``.
"""

from __future__ import annotations

import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import Service, wait_for

from itemsage.cluster.ports import free_port


@dataclass
class MlflowServer:
    backend_store_uri: str = field(repr=False)
    artifacts_dir: Path
    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> MlflowServer:
        """Start the server and wait until ``/health`` answers (it migrates the schema first)."""
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--artifacts-destination", self.artifacts_dir.resolve().as_uri(), "--serve-artifacts",
            # One worker: a test server, and the machine's cores belong to Ray.
            "--workers", "1",
        ]
        env = {
            **self.env,
            "MLFLOW_BACKEND_STORE_URI": self.backend_store_uri,
            # No server-side job execution (GenAI jobs, trace roll-ups; nothing here submits any):
            # with it the server starts a huey job runner and six polling consumers, 33 s of CPU in
            # its first 45 s against 7 s without (sqlite backend, idle box, 2026-12-05).
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self.service = Service("mlflow server", cmd, env, self.log).start()

        def healthy() -> bool:
            self.service.check_running()  # type: ignore[union-attr]
            # self.url: http://127.0.0.1:<port> of the MLflow server this object started.
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:  # nosec B310
                return r.status == 200

        wait_for(healthy, timeout_s, f"mlflow server at {self.url}")
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
