"""``POST /items/bulk``'s flow in the serving core: upserts and deletes of one request.

The deletes are checked first (every id known once this replica has applied the log), then the
upserts are stored (checked and embedded before anything is logged; a bad one fails them all),
then the deletes. So a request that fails on its input stores nothing. The two are separate
change-log transactions: a concurrent delete of one of the same ids between them can still make
the second answer 404 after the first was stored (the answer says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from itemsage.serve.errors import ItemNotFoundError

if TYPE_CHECKING:
    from itemsage.serve.core import RetrievalState
    from itemsage.serve.live import LiveCatalogService


async def write_items(
    service: LiveCatalogService,
    state: RetrievalState,
    upserts: Sequence[dict[str, Any]],
    deletes: Sequence[str],
) -> dict[str, Any]:
    """Store ``upserts`` then ``deletes``; ``{upserted, deleted, seq, model_version}``."""
    if deletes:
        await service.catch_up(state)
        unknown = [i for i in dict.fromkeys(deletes) if i not in state.index]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise ItemNotFoundError(f"unknown item id(s) {shown} to delete; nothing was stored")
    out: dict[str, Any] = {"upserted": 0, "deleted": 0, "seq": 0, "model_version": None}
    if upserts:
        done = await service.upsert_items(state, list(upserts))
        out.update(upserted=done["upserted"], seq=done["seq"], model_version=done["model_version"])
    if deletes:
        try:
            done = await service.delete_items(state, list(deletes))
        except ItemNotFoundError as e:
            if not upserts:
                raise
            raise ItemNotFoundError(
                f"{e.detail} (deleted concurrently; the {out['upserted']} upserts of this request are stored, "
                f"up to seq {out['seq']})"
            ) from None
        out.update(deleted=done["deleted"], seq=done["seq"])
    return out
