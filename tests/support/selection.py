"""Which tests this pytest run will run: lets a module fixture that starts work early (beside the
module's first test) skip it when the test it serves was deselected (``-k``, a node id)."""

from __future__ import annotations

import pytest


def will_run(request: pytest.FixtureRequest, test_name: str) -> bool:
    """Whether ``test_name`` of the requesting module is among the tests this run collected and kept.
    (Under ``--dist loadgroup`` a module runs whole on one worker, which holds every kept item.)"""
    return any(item.name == test_name and item.module is request.module for item in request.session.items)
