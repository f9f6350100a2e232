"""Processes of a throwaway local cluster: polling with deadlines, targeted stops (free ports come
from ``itemsage.cluster.ports``).

Everything here stops only what it started. A background service runs in its own session, and every
process of it (daemons that re-parent themselves included) carries a marker environment variable,
so a stop finds exactly those processes by pid, never by name: other Ray instances on the same
machine (a colleague's tests) must survive, which ``ray stop`` would not allow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil

T = TypeVar("T")

# Every process started through this module (and all its descendants) carries this variable.
MARKER_ENV = "ITEMSAGE_LOCAL_CLUSTER"


def wait_for(check: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.5) -> T:
    """Call ``check`` until it returns something other than None/False, or raise TimeoutError.

    ``check`` may raise ``OSError``/``ConnectionError`` while the thing is still coming up; the last
    such error is quoted in the timeout message.
    """
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        try:
            result = check()
            if result is not None and result is not False:
                return result
        except (OSError, ConnectionError) as e:
            last = f" (last error: {type(e).__name__}: {e})"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not ready after {timeout_s:g}s{last}")
        time.sleep(interval_s)


def run(
    cmd: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    timeout_s: float,
    cwd: str | Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a short command to completion; its output is appended to ``log`` and returned."""
    proc = subprocess.run(
        list(cmd), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout_s, start_new_session=True
    )
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n[exit {proc.returncode}]\n")
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"`{' '.join(cmd[:3])} ...` exited with {proc.returncode}: {tail[0]} (log: {log})")
    return proc


def marked_pids(marker: str) -> list[int]:
    """Pids of live processes whose environment has ``MARKER_ENV=marker``; processes that are gone
    or not ours to read are skipped."""
    return [proc.pid for proc in psutil.process_iter(["environ"])
            # environ None: not ours to read
            if proc.pid != os.getpid() and (proc.info["environ"] or {}).get(MARKER_ENV) == marker]


def _alive(proc: psutil.Process) -> bool:
    # A zombie is dead for our purposes (it only waits for its parent to reap it).
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def terminate(pids: Iterable[int], grace_s: float = 15.0) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace_s`` for them to exit, SIGKILL the rest.

    Returns the pids that needed SIGKILL.
    """
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)  # remembers the start time: a reused pid is not signalled
            proc.terminate()
            procs.append(proc)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.2)
    killed = [p for p in procs if _alive(p)]
    for proc in killed:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return [p.pid for p in killed]


@dataclass
class Service:
    """A long-running child process in its own session, logging to a file."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    cwd: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _out: IO[Any] | None = field(default=None, init=False)

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, cwd=self.cwd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def check_running(self) -> None:
        """Raise with the log's tail when the process has already exited (a failed start)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the service's process group, SIGKILL it after ``grace_s``."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._out is not None:
            self._out.close()
            self._out = None
