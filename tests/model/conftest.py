"""Model tests use tiny tensors: one intra-op thread is faster than two (no thread hand-offs) and
leaves the other core to the rest of the suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
