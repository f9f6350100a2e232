"""Live catalog writes over Ray Serve, on the trained demo model with two Retriever replicas.

Every write goes through the real path: Ingress (token, validation) -> a Retriever replica ->
ItemEncoder (batched item tower) -> the durable change log -> every Retriever replica applies it.
Visibility is checked on *each* replica: answers carry the replica's name and the log position it
had applied (``X-Itemsage-Replica``, ``X-Itemsage-Applied-Seq``), and a replica that says it has
applied a write must answer accordingly. The demo catalog (300 items) is smaller than ``max_k``,
so ``k=1000`` returns every item, and "the item is returned" is exact rather than a ranking
question.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import start_serve_app, stop_serve_app
from live_http import Answer, on_every_replica, request, result_ids

pytestmark = pytest.mark.slow

TOKEN = "live-serve-test-token"
REPLICAS = 2
DEPLOYMENTS = {"Retriever": {"num_replicas": REPLICAS}}
ALL = 1000  # max_k: more than the catalog holds


@pytest.fixture(scope="module")
def live(trained_serving: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    os.environ["ITEMSAGE_WRITE_TOKEN"] = TOKEN  # before Ray starts: the replicas inherit it
    serve_cfg = {"live": {"enabled": True, "dir": str(tmp_path_factory.mktemp("live"))}}
    try:
        served = start_serve_app(trained_serving, deployments=DEPLOYMENTS, serve_cfg=serve_cfg)
        yield served
    finally:
        stop_serve_app()
        os.environ.pop("ITEMSAGE_WRITE_TOKEN", None)


def catalog_ids(trained: Any) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(trained.features / "catalog.parquet", columns=["item_id"]).column("item_id").to_pylist()


def put(url: str, item_id: str, body: dict[str, Any]) -> Answer:
    return request(url, "PUT", f"/items/{item_id}", body, token=TOKEN)


def reads(known: str) -> list[tuple[str, dict[str, Any]]]:
    """The three read paths, each asked for every item."""
    return [
        ("/search", {"query": "red canvas sneakers", "k": ALL}),
        ("/similar", {"item_id": known, "k": ALL}),
        ("/recommend", {"history": [known], "k": ALL}),
    ]


def test_a_write_is_visible_on_every_replica_then_gone(live: dict[str, Any]) -> None:
    url = live["url"]
    known = catalog_ids(live["trained"])[0]
    ack = put(url, "live-1", {"title": "red canvas sneakers", "brand": "acme", "colors": "red"})
    assert ack.status == 200 and ack.body["op"] == "upsert", ack.body
    for path, body in reads(known):
        answers = on_every_replica(url, "POST", path, body, ack.body["seq"], REPLICAS)
        for replica, a in answers.items():
            assert a.status == 200 and "live-1" in result_ids(a), (path, replica)
    for replica, a in on_every_replica(url, "GET", "/items/live-1", None, ack.body["seq"], REPLICAS).items():
        assert a.status == 200 and a.body["title"] == "red canvas sneakers", replica

    gone = request(url, "DELETE", "/items/live-1", token=TOKEN)
    assert gone.status == 200 and gone.body["seq"] > ack.body["seq"]
    for path, body in reads(known):
        for replica, a in on_every_replica(url, "POST", path, body, gone.body["seq"], REPLICAS).items():
            assert a.status == 200 and "live-1" not in result_ids(a), (path, replica)
    for a in on_every_replica(url, "GET", "/items/live-1", None, gone.body["seq"], REPLICAS).values():
        assert a.status == 404


def test_writes_need_the_token_over_serve(live: dict[str, Any]) -> None:
    url = live["url"]
    assert request(url, "PUT", "/items/x1", {"title": "x"}).status == 401
    assert request(url, "PUT", "/items/x1", {"title": "x"}, token="wrong").status == 401
    assert request(url, "DELETE", "/items/x1").status == 401
    assert request(url, "POST", "/items/bulk", {"delete": ["x1"]}).status == 401
    assert request(url, "GET", "/items/x1").status == 404  # nothing was written
    assert request(url, "POST", "/search", {"query": "shoes"}).status == 200  # reads stay open


def test_the_same_put_twice_is_one_item_with_one_embedding(live: dict[str, Any]) -> None:
    url = live["url"]
    body = {"title": "olive wool beanie", "materials": "wool"}
    first = put(url, "live-twice", body)
    query = {"query": "olive wool beanie", "k": ALL}
    before = on_every_replica(url, "POST", "/search", query, first.body["seq"], REPLICAS)
    second = put(url, "live-twice", body)
    assert second.status == 200 and second.body["seq"] > first.body["seq"]
    after = on_every_replica(url, "POST", "/search", query, second.body["seq"], REPLICAS)
    for answers in (before, after):
        for a in answers.values():
            assert result_ids(a).count("live-twice") == 1
    scores = {
        round(h["score"], 6)
        for a in [*before.values(), *after.values()]
        for h in a.body["results"]
        if h["item_id"] == "live-twice"
    }
    assert len(scores) == 1, scores  # same embedding on every replica, before and after


def test_bad_input_over_serve_stores_nothing(live: dict[str, Any]) -> None:
    """Refused writes between two good ones: the good ones get consecutive log positions, so
    nothing was logged in between (the tests run one at a time; nothing else writes)."""
    url = live["url"]
    before = put(url, "live-marker-1", {"title": "marker one"})
    assert before.status == 200
    junk = base64.b64encode(b"\x89PNG\r\n\x1a\n this is not a png").decode()
    bad = put(url, "live-bad-image", {"title": "broken photo", "images": [junk]})
    assert bad.status == 422, bad.body
    assert put(url, "live-no-title", {"brand": "acme"}).status == 422
    assert request(url, "DELETE", "/items/no-such-item", token=TOKEN).status == 404
    after = put(url, "live-marker-2", {"title": "marker two"})
    assert after.body["seq"] == before.body["seq"] + 1, "a refused write reached the change log"
    for a in on_every_replica(url, "GET", "/items/live-bad-image", None, after.body["seq"], REPLICAS).values():
        assert a.status == 404


def test_a_photo_upload_is_embedded_and_served(live: dict[str, Any], sample_image: bytes) -> None:
    import urllib.request

    url = live["url"]
    boundary = "itemsage-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nstriped cotton shirt\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + sample_image
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    req = urllib.request.Request(
        url + "/items/live-photo",
        data=b"".join(parts),
        method="PUT",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:  # nosec B310 - the test's own server
        import json

        seq = json.loads(r.read())["seq"]
    for a in on_every_replica(url, "POST", "/search", {"query": "shirt", "k": ALL}, seq, REPLICAS).values():
        assert "live-photo" in result_ids(a)


def test_concurrent_put_and_delete_the_last_acknowledged_wins_everywhere(live: dict[str, Any]) -> None:
    """8 threads PUT (each its own title) and DELETE one id, 64 writes in all. The change log
    orders them; the write with the highest acknowledged seq is the state on every replica."""
    url = live["url"]
    put(url, "live-race", {"title": "race start"})
    acked: list[tuple[int, str, str | None]] = []  # (seq, op, title)
    lock = threading.Lock()

    def worker(w: int) -> None:
        for n in range(8):
            if (w + n) % 3 == 0:
                a = request(url, "DELETE", "/items/live-race", token=TOKEN)
                title = None
            else:
                title = f"race {w}-{n}"
                a = put(url, "live-race", {"title": title})
            assert a.status in (200, 404), (a.status, a.body)  # 404: someone else deleted it first
            if a.status == 200:
                with lock:
                    acked.append((a.body["seq"], a.body["op"], title))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(acked) >= 32 and len({s for s, _, _ in acked}) == len(acked), "two writes share a seq"
    last_seq, last_op, last_title = max(acked)
    for replica, a in on_every_replica(url, "GET", "/items/live-race", None, last_seq, REPLICAS).items():
        if last_op == "delete":
            assert a.status == 404, (replica, a.body)
        else:
            assert a.status == 200 and a.body["title"] == last_title, (replica, a.body)


def test_bulk_write_is_all_or_nothing(live: dict[str, Any]) -> None:
    url = live["url"]
    items = [{"item_id": f"live-bulk-{i}", "title": f"bulk item {i}"} for i in range(50)]
    ok = request(url, "POST", "/items/bulk", {"items": items}, token=TOKEN)
    assert ok.status == 200 and ok.body["upserted"] == 50
    for a in on_every_replica(
        url, "POST", "/search", {"query": "bulk item", "k": ALL}, ok.body["seq"], REPLICAS
    ).values():
        assert {i["item_id"] for i in items} <= set(result_ids(a))
    # One unknown id among the deletes: nothing of the request is applied.
    bad = request(
        url,
        "POST",
        "/items/bulk",
        {"items": [{"item_id": "live-bulk-x", "title": "x"}], "delete": ["live-bulk-0", "no-such-item"]},
        token=TOKEN,
    )
    assert bad.status == 404 and "no-such-item" in str(bad.body)
    for a in on_every_replica(url, "GET", "/items/live-bulk-0", None, ok.body["seq"], REPLICAS).values():
        assert a.status == 200
    assert request(url, "GET", "/items/live-bulk-x").status == 404


def test_fuzz_the_write_endpoints_no_5xx(live: dict[str, Any]) -> None:
    """schemathesis on PUT/DELETE /items/{item_id} and POST /items/bulk, with the token: no 5xx,
    answers match the schema, and the service stays healthy."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    url = live["url"]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [
        op.ok()
        for op in schema.get_all_operations()
        if (op.ok().method.upper(), op.ok().path)
        in {("PUT", "/items/{item_id}"), ("DELETE", "/items/{item_id}"), ("POST", "/items/bulk")}
    ]
    assert len(operations) == 3
    for op in operations:

        @settings(
            max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=op.as_strategy())
        def run(case: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
            case.call_and_validate(
                base_url=url,
                checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
                timeout=60,
            )

        run()
    assert request(url, "GET", "/healthz").status == 200
