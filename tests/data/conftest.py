"""The one small local Ray of the Ray Data suites here (test_ingest, test_preprocess,
test_amazon_preprocess).

``make test`` runs those three modules one after another on one worker (the "ray_data" group,
tests/support/xdist_groups.py), so a package fixture starts Ray once for all three instead of once
per module, and its idle workers, which have already imported Ray Data and pyarrow, serve the
next module's tasks. It stops when the worker leaves tests/data.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.support.ray_local import start_small_ray


@pytest.fixture(scope="package")
def ray_local() -> Iterator[None]:
    import ray

    start_small_ray()
    yield
    ray.shutdown()
