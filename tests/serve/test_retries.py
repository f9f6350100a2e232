"""Reads between deployments are retried once when a replica fails, never for a client's mistake.

Fake handles stand in for Serve's: ``method.remote(...)`` returns an awaitable, as a
``DeploymentResponse`` is. That Serve then routes the retry to another replica (its router drops a
replica it saw die) is what the end-to-end replica-kill tests in test_serve_e2e.py check.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

from itemsage.serve.api import ServiceUnavailableError
from itemsage.serve.deployments import HandleBackend, HandleEncoding
from itemsage.serve.errors import ItemNotFoundError


class FakeHandle:
    """Every method answers from ``outcomes`` in turn: an exception is raised, a value returned."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            def remote(self, *args: Any, **kwargs: Any) -> Any:
                handle.calls.append((method, args))
                outcome = handle.outcomes.pop(0)

                async def answer() -> Any:
                    if isinstance(outcome, BaseException):
                        raise outcome
                    return outcome

                return answer()

        return Method()


def test_a_failed_encoding_is_retried_once() -> None:
    queries = FakeHandle(ActorDiedError(), ["emb"])
    enc = HandleEncoding(queries, FakeHandle())
    assert asyncio.run(enc.texts("spec", ["red shoes"])) == ["emb"]
    assert queries.calls == [("texts", ("spec", ["red shoes"]))] * 2


def test_an_encoding_failing_twice_raises_the_failure() -> None:
    items = FakeHandle(ActorDiedError(), ActorDiedError(), "never asked")
    with pytest.raises(ActorDiedError):
        asyncio.run(HandleEncoding(FakeHandle(), items).item("spec", {"title": "x"}))
    assert len(items.calls) == 2


def test_client_errors_are_not_retried() -> None:
    queries = FakeHandle(ItemNotFoundError("no item 'x'"), "never asked")
    with pytest.raises(ItemNotFoundError):
        asyncio.run(HandleEncoding(queries, FakeHandle()).similar_query("spec", "x"))
    assert len(queries.calls) == 1
    retriever = FakeHandle(ItemNotFoundError("no item 'x'"), "never asked")
    with pytest.raises(ItemNotFoundError):
        asyncio.run(HandleBackend(retriever).item("x"))
    assert len(retriever.calls) == 1


def test_the_ingress_retries_once_then_answers_503() -> None:
    assert asyncio.run(HandleBackend(FakeHandle(ActorDiedError(), {"ok": 1})).search("q", 5)) == {"ok": 1}
    retriever = FakeHandle(ActorDiedError(), RuntimeError("still broken"), "never asked")
    with pytest.raises(ServiceUnavailableError):
        asyncio.run(HandleBackend(retriever).search("q", 5))
    assert len(retriever.calls) == 2
