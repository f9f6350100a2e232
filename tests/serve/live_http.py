"""HTTP helpers for the live-catalog tests over Ray Serve: calls that keep the replica headers,
authenticated writes, and reads until every Retriever replica has applied a write."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

REPLICA = "X-Itemsage-Replica"
APPLIED = "X-Itemsage-Applied-Seq"


@dataclass
class Answer:
    status: int
    body: Any
    replica: str | None
    applied: int | None


def request(
    url: str, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 60
) -> Answer:
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # nosec B310 - the test's own 127.0.0.1 server
            raw, hdrs, status = r.read(), r.headers, r.status
    except urllib.error.HTTPError as e:
        raw, hdrs, status = e.read(), e.headers, e.code
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw
    seq = hdrs.get(APPLIED)
    return Answer(status, parsed, hdrs.get(REPLICA), None if seq is None else int(seq))


def on_every_replica(
    url: str, method: str, path: str, body: Any, seq: int, replicas: int, timeout_s: float = 30.0
) -> dict[str, Answer]:
    """The first answer of each of ``replicas`` Retriever replicas that has applied ``seq``.

    Serve picks the replica; asking again until each has answered is how a client reaches all of
    them. Fails when that takes longer than ``timeout_s``.
    """
    got: dict[str, Answer] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < replicas:
        a = request(url, method, path, body)
        assert a.replica is not None and a.applied is not None, (a.status, a.body)
        if a.applied >= seq and a.replica not in got:
            got[a.replica] = a
        assert time.monotonic() < deadline, (
            f"only {sorted(got)} of {replicas} replicas applied seq {seq} in {timeout_s}s"
        )
    return got


def result_ids(answer: Answer) -> list[str]:
    return [h["item_id"] for h in answer.body["results"]]
