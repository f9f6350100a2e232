"""The repository's entry-point scripts (``experiments/*.py``, ``experiments/bench/*.py``) loaded as
modules, so a test can call their ``main(argv)`` or helpers in-process: they are files, not a
package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(path: str) -> ModuleType:
    """A fresh module of the script at ``path`` (relative to the repository root), registered in
    ``sys.modules`` under a name of its own: dataclasses and pickling look classes up by module name."""
    name = "script_" + path.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
