"""What the web-page tests share: Debian's headless Chromium (skipped, with the reason, where it is
absent) and the in-process API on a free local port for the page to talk to."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from tests.support.procs import wait_for

from itemsage.cluster.ports import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} not installed: the web-page tests drive Debian's chromium (`make browser` installs it as root)",
)


@contextmanager
def local_api(model_uri: str, index_uri: str) -> Iterator[str]:
    """``create_local_app`` for this model and index under uvicorn in a thread; yields its URL once
    ``/healthz`` answers (the lifespan loads the model and index first) and stops it afterwards."""
    import uvicorn

    from itemsage.serve.local import create_local_app

    app = create_local_app({"model_uri": model_uri, "index_uri": index_uri})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert thread.is_alive(), "the local API stopped while starting"
        try:
            return httpx.get(url + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 120, "the local API's /healthz", interval_s=0.2)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
