"""The endpoint table (itemsage.serve.endpoints.ENDPOINTS) against everything that names an endpoint.

The OpenAPI document comes from the FastAPI app object itself (``create_api``), no Ray and no model
loaded: the routes and schemas are the ones the Serve Ingress and the single-process server
answer with. Checked against it: the API table of ``docs/serving.md`` (both ways), every URL the
web page (``deployments/web``) calls with the method it uses and the body fields it sends, and
the layers that forward endpoint calls (backend protocol, Retriever core, Serve deployments).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Match

from itemsage.config import ServeConfig
from itemsage.serve.api import Backend, create_api
from itemsage.serve.endpoints import BACKEND_METHODS, ENDPOINTS
from itemsage.serve.schemas import RequestModels

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "deployments" / "web"
DOCS = REPO / "docs" / "serving.md"
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def app() -> Any:
    # The handlers are never called here, so no backend is needed.
    return create_api(object(), ServeConfig(), web_dir=WEB)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def openapi(app: Any) -> dict[str, Any]:
    return app.openapi()


def operations(openapi: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, ops in openapi["paths"].items() for m in ops if m in HTTP_METHODS}


def documented(text: str) -> list[tuple[str, str, str]]:
    """(method, path, query string) of each path in the API table under ``## API``."""
    lines = text[text.index("\n## API\n") :].splitlines()[1:]
    rows = []
    for line in lines:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    header, _, *body = rows
    assert [c.strip() for c in header.strip("|").split("|")][:2] == ["method", "path"], header
    out = []
    for row in body:
        method, paths = (c.strip() for c in row.strip("|").split("|")[:2])
        for p in re.findall(r"`([^`]+)`", paths):
            path, _, query = p.partition("?")
            out.append((method, path, query))
    return out


def page_calls(js: str, html: str) -> list[tuple[str, str, list[str]]]:
    """(method, URL, JSON body keys) of every request the web page makes."""
    calls: list[tuple[str, str, list[str]]] = []
    # post(path, body) is app.js's JSON POST helper, the one fetch without a literal URL.
    for path, body in re.findall(r'\bpost\(\s*"([^"]+)"\s*,\s*\{([^}]*)\}', js):
        keys = [part.split(":")[0].strip() for part in body.split(",") if part.strip()]
        calls.append(("POST", path, keys))
    for path, rest in re.findall(r'\bfetch\(\s*"([^"]+)"\s*(,[^)]*)?\)', js):
        method = re.search(r'method:\s*"(\w+)"', rest or "")
        calls.append((method.group(1).upper() if method else "GET", path, []))
    for url in re.findall(r'(?:href|src)="(/[^"]*)"', html):
        calls.append(("GET", url, []))
    # A request written some other way would go unchecked: the page must not have one.
    unparsed = [a for a in re.findall(r"(?<!function )\b(?:fetch|post)\(\s*([^,)\s]+)", js) if not a.startswith('"')]
    assert unparsed == ["path"], f"app.js calls fetch/post with a URL this test cannot read: {unparsed}"
    return calls


def web_page_problems(app: Any, openapi: dict[str, Any], js: str, html: str) -> list[str]:
    problems = []
    for method, url, keys in page_calls(js, html):
        if route_for(app, method, url) is None:
            problems.append(f"the web page calls {method} {url}, which the API does not have")
        elif url.startswith("/web/") and not (WEB / url.removeprefix("/web/")).is_file():
            problems.append(f"the web page loads {url}, which is not in deployments/web")
        elif keys:
            body = openapi["paths"][url][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
            allowed = openapi["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["properties"]
            if not set(keys) <= set(allowed):
                problems.append(f"the web page sends {keys} to {method} {url}; the request model allows {sorted(allowed)}")
    return problems


def route_for(app: Any, method: str, url: str) -> Any:
    scope = {"type": "http", "path": url, "method": method}
    for route in app.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
    return None


# ------------------------------------------------------------------------------ the table itself


def test_every_endpoint_is_a_route_of_the_app(app: Any, openapi: dict[str, Any]) -> None:
    assert operations(openapi) == {(e.method, e.path) for e in ENDPOINTS}
    assert len({e.name for e in ENDPOINTS}) == len(ENDPOINTS)
    for e in ENDPOINTS:
        op = openapi["paths"][e.path][e.method.lower()]
        assert ("requestBody" in op) == (e.request is not None), e.name
        assert {str(c) for c in e.errors} <= set(op["responses"]), e.name


def test_request_models_and_backend_methods_match_the_table() -> None:
    from itemsage.serve.deployments import HandleBackend, RetrieverDeployment
    from itemsage.serve.service import Retriever

    assert {e.request for e in ENDPOINTS if e.request} == set(RequestModels.__dataclass_fields__)
    protocol = {n for n, v in vars(Backend).items() if inspect.iscoroutinefunction(v)}
    assert protocol == set(BACKEND_METHODS)
    for name in BACKEND_METHODS:
        # The core answers each backend call with the protocol's parameters; the Serve layers forward it.
        core = inspect.signature(getattr(Retriever, name)).parameters
        assert list(core) == list(inspect.signature(getattr(Backend, name)).parameters), name
        assert inspect.iscoroutinefunction(getattr(Retriever, name)), name
        assert inspect.iscoroutinefunction(getattr(HandleBackend, name)), name
        assert callable(getattr(RetrieverDeployment.func_or_class, name, None)), name


def test_create_api_refuses_handlers_that_do_not_match_the_table() -> None:
    from fastapi import FastAPI

    from itemsage.serve.api import add_endpoints
    from itemsage.serve.schemas import build_request_models

    async def search(body: Any) -> Any:
        return body

    with pytest.raises(ValueError, match="no handler for .*'similar'"):
        add_endpoints(FastAPI(), {"search": search}, build_request_models(ServeConfig()))


# ------------------------------------------------------------------------------ docs/serving.md


def docs_problems(app: Any, openapi: dict[str, Any], text: str) -> list[str]:
    rows = documented(text)
    problems = []
    for method, path, query in rows:
        route = route_for(app, method, path)
        if route is None or getattr(route, "path", None) != path:
            problems.append(f"docs/serving.md lists {method} {path}, which is not a route of the API")
        elif query:
            params = {p["name"] for p in openapi["paths"][path][method.lower()].get("parameters", [])}
            names = {kv.partition("=")[0] for kv in query.split("&")}
            if not names <= params:
                problems.append(f"docs/serving.md: {method} {path}?{query}, but its parameters are {sorted(params)}")
    for method, path in sorted(operations(openapi) - {(m, p) for m, p, _ in rows}):
        problems.append(f"{method} {path} is missing from the API table in docs/serving.md")
    return problems


def test_docs_api_table_matches_the_openapi_document(app: Any, openapi: dict[str, Any]) -> None:
    text = DOCS.read_text()
    assert len(documented(text)) >= len(ENDPOINTS)
    assert docs_problems(app, openapi, text) == []


def test_docs_check_finds_a_wrong_or_missing_row(app: Any, openapi: dict[str, Any]) -> None:
    text = DOCS.read_text()
    wrong = text.replace("| POST | `/recommend` |", "| GET | `/recommend` |").replace("`/items/{item_id}/image?i=0`", "`/items/{item_id}/image?j=0`")
    assert docs_problems(app, openapi, wrong) == [
        "docs/serving.md lists GET /recommend, which is not a route of the API",
        "docs/serving.md: GET /items/{item_id}/image?j=0, but its parameters are ['i', 'item_id']",
        "POST /recommend is missing from the API table in docs/serving.md",
    ]


# ------------------------------------------------------------------------------ the web page


def test_every_request_of_the_web_page_exists(app: Any, openapi: dict[str, Any]) -> None:
    js, html = (WEB / "app.js").read_text(), (WEB / "index.html").read_text()
    calls = {(m, u) for m, u, _ in page_calls(js, html)}
    assert calls >= {("POST", "/search"), ("POST", "/similar"), ("GET", "/version"), ("GET", "/web/app.js")}
    assert web_page_problems(app, openapi, js, html) == []


def test_web_page_check_finds_a_wrong_call(app: Any, openapi: dict[str, Any]) -> None:
    js, html = (WEB / "app.js").read_text(), (WEB / "index.html").read_text()
    js = js.replace('post("/search", { query,', 'post("/serch", { query,').replace("item_id: hit.item_id,", "id: hit.item_id,")
    assert web_page_problems(app, openapi, js, html.replace("/web/app.js", "/web/main.js")) == [
        "the web page calls POST /serch, which the API does not have",
        "the web page sends ['id', 'k', 'filters', 'mode'] to POST /similar; the request model allows "
        "['filters', 'image', 'item_id', 'k', 'mode']",
        "the web page loads /web/main.js, which is not in deployments/web",
    ]
