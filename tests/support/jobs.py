"""``ray job submit`` exactly as a user types it, with the outcome read back from the Jobs API.

The CLI uploads the working directory, runs the entrypoint on the cluster and tails its log until
the job ends; its output is kept in a log file per job. The final status comes from the Jobs API
(``GET /api/jobs/<id>``), not from parsing the CLI's output.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ray_nodes import LocalRayCluster

# Never uploaded with --working-dir: environments, wheel caches, run outputs and local tracking
# stores, which are large or machine-specific. Ray honours .gitignore files too, but this list
# does not depend on them, and Ray does not read .git/info/exclude (see git_ignored).
WORKING_DIR_EXCLUDES = (
    ".git", ".venv", "artifacts", "mlruns", "mlartifacts", "mlflow.db", "ray_results",
    ".pytest_cache", ".hypothesis", ".whl", ".wheels", "*.whl", ".cache", "**/__pycache__",
)


@dataclass
class JobResult:
    name: str
    submission_id: str
    status: str
    cli_exit_code: int
    log: Path
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def git_ignored(working_dir: Path) -> list[str]:
    """What git ignores in ``working_dir`` (.gitignore files and .git/info/exclude, which Ray does
    not read), as patterns anchored at the working dir; [] outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(working_dir), "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    # No trailing slash: Ray matches a directory's own path without one.
    return ["/" + path.rstrip("/") for path in out.split("\0") if path.strip()]


def runtime_env(env_vars: Mapping[str, str] | None = None, working_dir: Path | None = None) -> dict[str, Any]:
    """The ``--runtime-env-json`` of our jobs: working-dir excludes and environment variables."""
    ignored = git_ignored(working_dir) if working_dir is not None else []
    out: dict[str, Any] = {"excludes": [*WORKING_DIR_EXCLUDES, *(p for p in ignored if p not in WORKING_DIR_EXCLUDES)]}
    if env_vars:
        out["env_vars"] = dict(env_vars)
    return out


def submit(
    cluster: LocalRayCluster,
    name: str,
    entrypoint: Sequence[str],
    *,
    working_dir: Path,
    env_vars: Mapping[str, str] | None,
    log_dir: Path,
    timeout_s: float,
) -> JobResult:
    """``ray job submit --working-dir <dir> --runtime-env-json ... -- <entrypoint>``; waits for the end.

    On timeout the job is stopped (``ray job stop``) and TimeoutError raised.
    """
    submission_id = f"itemsage-{name}-{int(time.time())}"
    cmd = [
        str(Path(sys.executable).parent / "ray"), "job", "submit",
        "--address", cluster.dashboard_url,
        "--submission-id", submission_id,
        "--working-dir", str(working_dir),
        "--runtime-env-json", json.dumps(runtime_env(env_vars, working_dir)),
        "--", *entrypoint,
    ]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"job-{name}.log"
    t0 = time.monotonic()
    with log.open("w") as out:
        out.write(f"$ ray job submit ... -- {' '.join(entrypoint)}\n")
        out.flush()
        try:
            proc = subprocess.run(cmd, env=cluster.env, cwd=working_dir, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout_s, start_new_session=True)
        except subprocess.TimeoutExpired as e:
            subprocess.run([cmd[0], "job", "stop", "--address", cluster.dashboard_url, submission_id],
                           env=cluster.env, capture_output=True, timeout=120)
            raise TimeoutError(f"job {name} ({submission_id}) still running after {timeout_s:.0f}s; stopped it (log: {log})") from e
    info = cluster.job_info(submission_id)
    return JobResult(
        name=name,
        submission_id=submission_id,
        status=str(info.get("status")),
        cli_exit_code=proc.returncode,
        log=log,
        seconds=time.monotonic() - t0,
        info=info,
    )
