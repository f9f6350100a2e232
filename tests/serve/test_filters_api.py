"""``filters`` on /search, /similar, /recommend and ``GET /facets``, over the in-process API.

The tiny serving index carries the default filterable attributes (gender, product_type, color)
built from its features' catalog.parquet, as ``build_and_log_index`` builds them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient


def fields_of(client: TestClient, item_id: str) -> dict[str, str]:
    return client.get(f"/items/{item_id}").json()["fields"]


@pytest.fixture(scope="module")
def facets(local_client: TestClient) -> dict[str, Any]:
    r = local_client.get("/facets")
    assert r.status_code == 200, r.text
    return {a["name"]: a for a in r.json()["attributes"]}


def test_facets_list_the_values_with_their_counts(local_client: TestClient, facets: dict[str, Any]) -> None:
    assert set(facets) == {"gender", "product_type", "color"}  # the sample catalog has no price
    ids = [h["item_id"] for h in local_client.post("/search", json={"query": "shirt", "k": 1000}).json()["results"]]
    genders = Counter(fields_of(local_client, i).get("size_type", "") for i in ids)
    assert {v["value"]: v["count"] for v in facets["gender"]["values"]} == {g: c for g, c in genders.items() if g}
    counts = [v["count"] for v in facets["product_type"]["values"]]
    assert counts == sorted(counts, reverse=True)


def test_search_filters_apply_inside_the_search(local_client: TestClient, facets: dict[str, Any]) -> None:
    gender = facets["gender"]["values"][1]  # not the most frequent value
    r = local_client.post("/search", json={"query": "shirt", "k": 50, "filters": {"gender": gender["value"]}})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    # Every matching item comes back (k > matches): the filter restricts the candidates, it does not
    # cut a fixed top-k.
    assert len(results) == gender["count"]
    assert all(fields_of(local_client, h["item_id"])["size_type"] == gender["value"] for h in results)


def test_and_of_clauses_and_in_lists(local_client: TestClient, facets: dict[str, Any]) -> None:
    types = [v["value"] for v in facets["product_type"]["values"][:2]]
    filters = {"product_type": types, "gender": facets["gender"]["values"][0]["value"]}
    r = local_client.post("/search", json={"query": "blue", "k": 10, "filters": filters})
    assert r.status_code == 200, r.text
    for hit in r.json()["results"]:
        f = fields_of(local_client, hit["item_id"])
        assert f["product_types"] in types and f["size_type"] == filters["gender"]


def test_similar_and_recommend_take_filters(local_client: TestClient, facets: dict[str, Any]) -> None:
    item = local_client.post("/search", json={"query": "watch", "k": 1}).json()["results"][0]["item_id"]
    color = facets["color"]["values"][0]["value"]
    for path, body in (
        ("/similar", {"item_id": item, "k": 5, "filters": {"color": color}}),
        ("/recommend", {"history": [item], "k": 5, "filters": {"color": [color]}}),
    ):
        r = local_client.post(path, json=body)
        assert r.status_code == 200, (path, r.text)
        hits = r.json()["results"]
        assert hits and all(color in fields_of(local_client, h["item_id"])["colors"] for h in hits)
        assert item not in {h["item_id"] for h in hits}


def test_no_match_is_an_empty_list(local_client: TestClient) -> None:
    r = local_client.post("/search", json={"query": "shirt", "k": 5, "filters": {"gender": "Martians"}})
    assert r.status_code == 200 and r.json()["results"] == []


@pytest.mark.parametrize(
    ("filters", "fragment"),
    [
        ({"colour": "Red"}, "unknown filter attribute 'colour'; filterable: color, gender, product_type"),
        ({"price": {"lt": 50}}, "unknown filter attribute 'price'"),
        ({"gender": 1}, "filter 'gender' is a keyword attribute: give a string or a list of strings"),
        ({"gender": {"gte": 1}}, "ranges apply to number attributes only"),
        ({"gender": []}, "the list of values is empty"),
        ({"gender": None}, "give a string"),
        ({f"a{i}": "x" for i in range(17)}, "at most 16 items"),
        ("Women", "valid dictionary"),
    ],
)
def test_bad_filters_are_a_clear_422(local_client: TestClient, filters: Any, fragment: str) -> None:
    for path, body in (
        ("/search", {"query": "shirt"}),
        ("/recommend", {"history": ["nope"]}),  # the filter is checked before the history's items
    ):
        r = local_client.post(path, json={**body, "filters": filters})
        assert r.status_code == 422, (path, r.text)
        assert fragment in r.text, r.text


def test_fuzz_the_filtered_endpoints_no_5xx(local_client: TestClient) -> None:
    """schemathesis over /search, /similar, /recommend (``filters`` included) and /facets,
    in process: no 5xx, and every answer conforms to the schema."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    schema = schemathesis.openapi.from_asgi("/openapi.json", local_client.app)
    wanted = {"/search", "/similar", "/recommend", "/facets"}
    operations = [op.ok() for op in schema.get_all_operations() if op.ok().path in wanted]
    assert len(operations) == 4
    for op in operations:

        @settings(
            max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=op.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance, response_schema_conformance])

        run()
