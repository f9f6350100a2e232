"""The CPU and GPU installs each resolve to exactly one FAISS build, and the GPU one is CUDA 13 like torch.

Both installs are resolved by pip itself (``pip install --dry-run --report``, nothing installed) the
way ``make install`` / the Dockerfile run them, so a dependency change that brings a second FAISS
wheel (both provide the ``faiss`` module: whichever unpacks last wins) or a FAISS built for another
CUDA major than torch's fails here. Needs PyPI; skipped with the reason when it cannot be reached.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = pytest.mark.slow  # two full resolutions: a minute or more

REPO = Path(__file__).resolve().parents[1]
FAISS_DISTS = {"faiss", "faiss-cpu", "faiss-gpu", "faiss-gpu-cu11", "faiss-gpu-cu12", "faiss-gpu-cu13",
               "faiss-gpu-cuvs", "faiss-gpu-cu12-cuvs", "faiss-gpu-cu13-cuvs"}
# CUDA runtime wheels that torch pins to its exact CUDA release; FAISS asks for a later minor of
# the same major (requirements/faiss-gpu.txt says why that is accepted).
CUDA_LIBS = {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-nvjitlink", "nvidia-curand"}


def _pypi_reachable() -> str | None:
    try:
        urllib.request.urlopen("https://pypi.org/simple/faiss-cpu/", timeout=10).close()
    except OSError as e:
        return f"PyPI unreachable ({e}); cannot resolve the installs"
    return None


def resolve(tmp_path: Path, *args: str) -> dict[str, Any]:
    """pip's dry-run report: {normalised name: metadata} of everything the install would bring."""
    report = tmp_path / f"report-{len(list(tmp_path.iterdir()))}.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--disable-pip-version-check", "--report", str(report), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} does not resolve:\n{proc.stderr[-3000:]}"
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]
            for i in json.loads(report.read_text())["install"]}


def cuda_major_of_torch(dists: dict[str, Any]) -> int:
    return Version(dists["nvidia-cuda-runtime"]["version"]).major


def faiss_of(dists: dict[str, Any]) -> list[str]:
    return sorted(set(dists) & FAISS_DISTS)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The three resolutions, run at once: each mostly waits on PyPI, so together they take about
    as long as the slowest one instead of the sum."""
    reason = _pypi_reachable()
    if reason:
        pytest.skip(reason)
    faiss_reqs = [ln.strip() for ln in (REPO / "requirements/faiss-gpu.txt").read_text().splitlines()
                  if ln.strip() and not ln.startswith("#")]
    installs = {"cpu": (".[cpu]",), "gpu": (".[gpu]",), "faiss-gpu": ("--no-deps", "--only-binary=:all:", *faiss_reqs)}
    with ThreadPoolExecutor(len(installs)) as pool:
        futures = {name: pool.submit(resolve, tmp_path_factory.mktemp(name), *args) for name, args in installs.items()}
        return {name: f.result() for name, f in futures.items()}


def test_cpu_install_has_faiss_cpu_only(resolved: dict[str, dict[str, Any]]) -> None:
    dists = resolved["cpu"]
    assert faiss_of(dists) == ["faiss-cpu"]
    assert "torch" in dists


def test_gpu_install_has_one_cuda13_faiss_matching_torch(resolved: dict[str, dict[str, Any]]) -> None:
    dists = resolved["gpu"]
    assert faiss_of(dists) == [], "the gpu extra must not bring a FAISS build (faiss-cpu least of all)"
    faiss = resolved["faiss-gpu"]
    assert faiss_of(faiss) == ["faiss-gpu-cuvs"] and len(faiss) == 1
    installed = {**dists, **faiss}
    assert faiss_of(installed) == ["faiss-gpu-cuvs"]

    torch_major = cuda_major_of_torch(dists)
    assert Version(dists["torch"]["version"]).release[:2] >= (2, 9)
    meta = faiss["faiss-gpu-cuvs"]
    mismatched = []
    for line in meta.get("requires_dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        assert name in installed, f"faiss-gpu-cuvs needs {line}, which the gpu install does not bring"
        have = Version(installed[name]["version"])
        if have in req.specifier:
            continue
        # Only the CUDA runtime libraries may differ, and only in the minor version.
        assert name in CUDA_LIBS, f"faiss-gpu-cuvs needs {line}; the gpu install has {name} {have}"
        majors = {Version(s.version).major for s in req.specifier if s.operator in (">=", "==", "~=")}
        assert majors == {have.major}, f"{line}: CUDA major {majors} but torch's is {have.major}"
        mismatched.append(name)
    # The cuVS libraries and FAISS itself are CUDA 13 builds, as torch is.
    assert torch_major == 13, f"torch resolved with CUDA {torch_major}; update the FAISS pins with it"
    assert {"libcuvs-cu13", "libraft-cu13", "librmm-cu13"} <= set(dists)
    assert any(Requirement(r).name == "nvidia-cuda-runtime" and "<14" in str(Requirement(r).specifier)
               for r in meta["requires_dist"]), "faiss-gpu-cuvs is no longer the CUDA 13 build"
    assert set(mismatched) <= CUDA_LIBS
