"""``serve run deployments/serve_config.yaml`` works: the documented command, as a subprocess.

The config file is used as shipped, with only the served version and the port changed (the
shipped file serves ``models:/itemsage/latest`` from ./mlflow.db, which a test must not touch).

The SIGTERM test's app (``LocalApp``) starts with the module's first test, beside the ``serve run``
test's app: each start mostly waits (Ray, then the replicas loading the model).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from conftest import free_port
from tests.support.selection import will_run

from itemsage.serve.fast_ingress import use_fast_serving

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_serve_run_config_file(trained_serving: Any, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from deployments.app import serve_config_dict, wait_healthy

    port = free_port()
    version = {"model_uri": "models:/itemsage/latest", "index_uri": "models:/itemsage/latest", "mlflow_tracking_uri": trained_serving.tracking_uri}
    config = tmp_path / "serve_config.yaml"
    config.write_text(yaml.safe_dump(serve_config_dict(version, port=port)))
    serve_bin = Path(sys.executable).parent / "serve"
    # A fresh local Ray of its own, whatever this process is connected to.
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "RAY_USAGE_STATS_ENABLED": "0",
        # The Ctrl-C below need not wait Serve's 30 s drain: nothing is in flight by then (the
        # drain path itself is checked by test_sigterm_drains_like_ctrl_c).
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }
    env.setdefault("RAY_raylet_start_wait_time_s", "120")  # a busy machine registers nodes slowly
    use_fast_serving(env)  # as documented for `serve run`; fresh HAProxy ports for this Ray
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(serve_bin), "run", str(config)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            health = None
            while health is None and time.monotonic() < deadline:
                assert proc.poll() is None, f"serve run exited with code {proc.returncode}"
                try:
                    health = wait_healthy(f"http://127.0.0.1:{port}", timeout_s=5)
                except TimeoutError:
                    continue
            assert health is not None, "not healthy after 300 s"
            assert health["model_version"] == "2"  # `latest` was pinned to the newest registered version
            import json
            import urllib.request

            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/search", json.dumps({"query": "watch", "k": 3}).encode(), {"content-type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=60) as r:
                assert len(json.loads(r.read())["results"]) == 3
        except BaseException:
            print(log.read_text()[-5000:])
            raise
        finally:
            # serve run shuts Serve and its Ray down on Ctrl-C; a run that already exited (the
            # failure reported above) has no process group left to signal.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


class LocalApp:
    """``python deployments/app.py`` serving ``models:/itemsage/latest`` (``make demo``'s serve stage
    waits in the same ``deployments.app.serve_until_stopped``), in a session of its own."""

    def __init__(self, trained: Any, root: Path) -> None:
        self.port = free_port()
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_USAGE_STATS_ENABLED": "0",
               "MLFLOW_TRACKING_URI": trained.tracking_uri,
               # Serve's own drain wait (30 s by default) is not what is tested here; the path to it is.
               "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}
        env.setdefault("RAY_raylet_start_wait_time_s", "120")  # a busy machine registers nodes slowly
        self.log = root / "app.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "deployments/app.py", "models:/itemsage/latest", "models:/itemsage/latest",
                 "--port", str(self.port)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while "ItemSage is serving at" not in self.log.read_text():
            assert time.monotonic() < deadline, f"not serving after {timeout_s:.0f} s:\n{self.log.read_text()[-3000:]}"
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1)
            assert self.proc.poll() is None, (
                f"deployments/app.py exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module", autouse=True)
def local_app(
    request: pytest.FixtureRequest, trained_serving: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalApp | None]:
    if not will_run(request, "test_sigterm_drains_like_ctrl_c"):
        yield None  # its test was deselected: start nothing for it
        return
    app = LocalApp(trained_serving, tmp_path_factory.mktemp("local_app"))
    try:
        yield app
    finally:
        app.kill()  # nothing of it is left running, also when its test did not run


def test_sigterm_drains_like_ctrl_c(local_app: LocalApp) -> None:
    """SIGTERM to a local Serve (``python deployments/app.py``) drains and exits 0, as Ctrl-C does,
    instead of Ray's C++ "*** SIGTERM received ... Aborted" trace."""
    proc = local_app.proc
    try:
        local_app.wait_serving(300)
        proc.send_signal(signal.SIGTERM)  # to the driver only, as `kill PID` (or make) sends it
        code = proc.wait(180)
    finally:
        local_app.kill()
    text = local_app.log.read_text()
    assert code == 0, text[-3000:]
    lines = [line.strip() for line in text.splitlines()]
    assert "stopping Serve (its API replica drains for up to 30 s; Ctrl-C again to kill)" in lines, text[-3000:]
    assert "stopped" in lines and "stopped without draining" not in lines, text[-3000:]
    assert "Aborted" not in text and "SIGTERM received" not in text, text[-3000:]
    # Serve (and its HAProxy) stopped: nothing listens on the API port any more.
    listening = [
        c for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == local_app.port
    ]
    assert not listening, listening
