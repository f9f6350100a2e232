"""Write to a live catalog from Python: upsert and delete items, sync a catalog file.

    from itemsage.api.catalog import connect, sync_catalog

    served = connect("http://127.0.0.1:8000", token=os.environ["ITEMSAGE_WRITE_TOKEN"])
    served.upsert_items([{"item_id": "sku-1", "title": "red running shoes", "price": 49.0}])
    served.delete_items(["sku-0"])
    report = sync_catalog(served, "data/sample/fashion", dry_run=True)   # adds/updates/deletes

    local = connect("artifacts/index", model="models:/itemsage/3")      # no server: a local index

A target is either a served deployment (its HTTP write endpoints, ``serve.live.enabled``) or a
local index directory: then the writes go through the same serving core in this process (item
encoder, durable change log beside the index, ``itemsage.serve.live``), and a server started on
that index later (or already following the same log) serves them.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from itemsage.config import TEXT_FIELDS, LiveConfig, ServeConfig
from itemsage.index.changelog import image_digest, item_digest

# Items per write request: the HTTP bulk endpoint's limit, and one change-log transaction.
BULK_ITEMS = 1000


class CatalogTarget(Protocol):
    """What a catalog sync needs from a served (or local) catalog."""

    def upsert_items(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]: ...
    def delete_items(self, item_ids: Sequence[str]) -> dict[str, Any]: ...
    def item_digests(self) -> dict[str, str]: ...


class WriteError(RuntimeError):
    """A write was refused (the message is the server's) or the target cannot be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------- over HTTP


class ServedCatalog:
    """A served deployment's catalog, through its HTTP write endpoints.

    ``POST /items/bulk`` (``{"items": [...]}`` or ``{"delete": [...]}``, images base64, attributes
    under ``attributes``), ``GET /catalog/digests``; the write token goes in ``Authorization: Bearer``.
    """

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 120.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            r = self._http.post(path, json=body)
        except httpx.HTTPError as e:
            raise WriteError(f"{self.url}{path}: {e}") from None
        return _answer(r, path)

    def upsert_items(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"upserted": 0, "seq": None}
        for chunk in _chunks(list(items), BULK_ITEMS):
            body = {"items": [_jsonable(it) for it in chunk]}
            res = self._post("/items/bulk", body)
            out["upserted"] += int(res.get("upserted", len(chunk)))
            out["seq"] = res.get("seq", out["seq"])
        return out

    def delete_items(self, item_ids: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"deleted": 0, "seq": None}
        for chunk in _chunks(list(item_ids), BULK_ITEMS):
            res = self._post("/items/bulk", {"delete": chunk})
            out["deleted"] += int(res.get("deleted", len(chunk)))
            out["seq"] = res.get("seq", out["seq"])
        return out

    def item_digests(self) -> dict[str, str]:
        import httpx

        try:
            r = self._http.get("/catalog/digests")
        except httpx.HTTPError as e:
            raise WriteError(f"{self.url}/catalog/digests: {e}") from None
        data = _answer(r, "/catalog/digests")
        return dict(data.get("items", data))

    def close(self) -> None:
        self._http.close()


def _answer(r: Any, path: str) -> dict[str, Any]:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise WriteError(f"{path}: HTTP {r.status_code}: {detail}", r.status_code)
    return dict(r.json())


def _jsonable(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item as the HTTP API takes it: text fields at the top, the other keys (filterable
    attributes) under ``attributes`` (a typo in a field name is then a 422, not an attribute)."""
    top = {*TEXT_FIELDS, "item_id"}
    out = {k: v for k, v in item.items() if k in top}
    attributes = {k: v for k, v in item.items() if k not in top and k not in ("images", "attributes")}
    attributes.update(item.get("attributes") or {})
    if attributes:
        out["attributes"] = attributes
    if item.get("images"):
        out["images"] = [base64.b64encode(bytes(b)).decode("ascii") for b in item["images"]]
    return out


# --------------------------------------------------------------------------------- in process


class LocalCatalog:
    """A local index's live catalog, written in this process through the serving core.

    Args:
        index: the served index directory (its ``live/`` sibling holds the log by default).
        model: the model whose embeddings the index holds (``models:/...`` or a bundle dir).
        features: features directory (default: the model manifest's).
        live: ``serve.live`` settings (``dir``, ``changelog_uri``); ``enabled`` is implied.
    """

    def __init__(
        self,
        index: str | os.PathLike[str],
        model: str,
        features: str | None = None,
        live: LiveConfig | None = None,
        cfg: ServeConfig | None = None,
    ) -> None:
        from itemsage.serve.core import ServingSpec
        from itemsage.serve.local import local_retriever

        base = cfg or ServeConfig()
        live_cfg = (live or base.live).replace(enabled=True)
        self.cfg = base.replace(live=live_cfg)
        self._loop = asyncio.new_event_loop()
        self.retriever = local_retriever(self.cfg, base_dir=os.getcwd())
        spec = {"model_uri": str(model), "index_uri": str(index)}
        if features:
            spec["features"] = str(features)
        self._run(self.retriever.swap(ServingSpec.from_user_config(spec)))

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def upsert_items(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"upserted": 0, "seq": None}
        for chunk in _chunks([dict(it) for it in items], BULK_ITEMS):
            res = self._run(self.retriever.upsert_items(chunk))
            out["upserted"] += res["upserted"]
            out["seq"] = res["seq"]
        return out

    def delete_items(self, item_ids: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"deleted": 0, "seq": None}
        for chunk in _chunks(list(item_ids), BULK_ITEMS):
            res = self._run(self.retriever.delete_items(chunk))
            out["deleted"] += res["deleted"]
            out["seq"] = res["seq"]
        return out

    def item_digests(self) -> dict[str, str]:
        return dict(self._run(self.retriever.item_digests()))

    def status(self) -> dict[str, Any]:
        return dict(self._run(self.retriever.live_status()))

    def search(self, query: str, k: int = 10, mode: str | None = None) -> dict[str, Any]:
        """A search over the live index (every write of this process applied first); ``mode``:
        dense | lexical | hybrid, as ``/search`` takes it (default: the config's)."""
        assert self.retriever.live is not None
        self._run(self.retriever.live.catch_up(self.retriever.state))
        return dict(self._run(self.retriever.search(query, k, mode=mode)))

    def similar(self, item_id: str, k: int = 10, mode: str | None = None) -> dict[str, Any]:
        """Items like ``item_id`` over the live index, as ``/similar`` answers; ``mode``: dense |
        lexical | hybrid (default: ``serve.hybrid.similar_default_mode``)."""
        assert self.retriever.live is not None
        self._run(self.retriever.live.catch_up(self.retriever.state))
        return dict(self._run(self.retriever.similar(k, item_id=item_id, mode=mode)))

    def close(self) -> None:
        if self.retriever.live is not None:
            self._run(self.retriever.live.close())
        self._loop.close()

    def __enter__(self) -> LocalCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(target: str | os.PathLike[str], *, token: str | None = None, **local: Any) -> Any:
    """A :class:`ServedCatalog` for an ``http(s)://`` URL (``token``: the write token, default
    ``$ITEMSAGE_WRITE_TOKEN``), else a :class:`LocalCatalog` over an index directory (keyword
    arguments: ``model`` (required), ``features``, ``live``)."""
    t = str(target)
    if t.startswith(("http://", "https://")):
        return ServedCatalog(t, token if token is not None else os.environ.get("ITEMSAGE_WRITE_TOKEN"))
    if "model" not in local:
        raise ValueError("a local index needs model=... (the model whose embeddings it holds)")
    return LocalCatalog(t, **local)


def upsert_items(target: CatalogTarget, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Add or replace ``items`` (``item_id``, ``title``, other text fields, attributes, ``images``
    as bytes); returns ``{"upserted", "seq"}`` once they are durably stored."""
    return target.upsert_items(items)


def delete_items(target: CatalogTarget, item_ids: Sequence[str]) -> dict[str, Any]:
    """Delete ``item_ids``; every id must be served (else nothing is deleted)."""
    return target.delete_items(item_ids)


# ------------------------------------------------------------------------------------- sync


@dataclass
class SyncReport:
    """What a sync found (and, unless ``dry_run``, did)."""

    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0
    dry_run: bool = False
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        verb = "would " if self.dry_run else ""
        return (
            f"{verb}add {self.added}, {verb}update {self.updated}, {verb}delete {self.deleted}; "
            f"unchanged {self.unchanged}, skipped {self.skipped}"
        )


@dataclass(frozen=True)
class CatalogRow:
    """One item of a catalog file: its text fields and image files (read when written)."""

    item_id: str
    fields: dict[str, str]
    image_paths: tuple[str, ...]

    def digest(self) -> str:
        """The digest the server records for this item once written (changelog.item_digest)."""
        return item_digest(self.fields, [image_digest(Path(p).read_bytes()) for p in self.image_paths])

    def payload(self) -> dict[str, Any]:
        return {"item_id": self.item_id, **self.fields, "images": [Path(p).read_bytes() for p in self.image_paths]}


def read_catalog_rows(path: str | Path, layout: str = "auto") -> tuple[list[CatalogRow], dict[str, int]]:
    """The items of a catalog (any supported layout), and the reader's skipped rows by reason:
    bad rows are counted, not fatal; unreadable image files are left out of their item."""
    from itemsage.data.catalog import read_catalog

    read = read_catalog(path, layout)
    reasons = dict(read.reject_counts())
    out = []
    for row in read.items.to_dict("records"):
        fields = {f: str(row.get(f) or "") for f in TEXT_FIELDS}
        if not fields["title"]:
            reasons["no_title"] = reasons.get("no_title", 0) + 1
            continue
        listed = [str(p) for p in row.get("image_paths") or []]
        paths = tuple(p for p in listed if os.access(p, os.R_OK))
        if len(paths) < len(listed):
            reasons["image_unreadable"] = reasons.get("image_unreadable", 0) + 1
        out.append(CatalogRow(str(row["item_id"]), {k: v for k, v in fields.items() if v}, paths))
    return out, reasons


def sync_catalog(
    target: CatalogTarget,
    catalog: str | Path | Sequence[CatalogRow],
    layout: str = "auto",
    dry_run: bool = False,
    delete_missing: bool = True,
) -> SyncReport:
    """Make what ``target`` serves equal to ``catalog`` (a catalog path in any supported layout,
    or write payloads): add new items, update changed ones (content digest differs), delete
    served items the catalog no longer has (unless ``delete_missing=False``)."""
    if isinstance(catalog, (str, Path)):
        rows, reasons = read_catalog_rows(catalog, layout)
    else:
        rows, reasons = list(catalog), {}
    served = target.item_digests()
    wanted = {r.item_id: r for r in rows}
    adds = [r for i, r in wanted.items() if i not in served]
    updates = [r for i, r in wanted.items() if i in served and served[i] != r.digest()]
    deletes = [i for i in served if i not in wanted] if delete_missing else []
    report = SyncReport(
        added=len(adds),
        updated=len(updates),
        deleted=len(deletes),
        unchanged=len(wanted) - len(adds) - len(updates),
        skipped=sum(reasons.values()),
        skipped_reasons=reasons,
        dry_run=dry_run,
    )
    if dry_run:
        return report
    for chunk in _chunks(adds + updates, BULK_ITEMS):  # image bytes are read per chunk only
        report.seq = target.upsert_items([r.payload() for r in chunk]).get("seq")
    if deletes:
        report.seq = target.delete_items(deletes).get("seq")
    return report


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
