"""One skipped or degraded record (``Reject``) and the UTF-8 repair every reader shares.

Kept apart from ``itemsage.data.catalog`` so that format modules it dispatches to (e.g.
``itemsage.data.amazon``) can report rejects without importing the catalog module back.
``itemsage.data.catalog`` re-exports both names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Reject:
    """One skipped or degraded record, written to ``rejects.jsonl`` by preprocessing."""

    stage: str
    item_id: str | None
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def non_utf8_reject(stage: str, item_id: str | None, where: str, fields: list[str]) -> Reject:
    """The reject that reports ``fields`` of a record at ``where`` whose bytes ``fix_utf8`` replaced."""
    detail = f"{where}: bytes that are not UTF-8 in {', '.join(fields)} were replaced by U+FFFD"
    return Reject(stage, item_id, "non_utf8_text", detail)


def fix_utf8(text: str) -> tuple[str, bool]:
    """Replace smuggled non-UTF-8 bytes (surrogates) by U+FFFD; say whether there were any."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace"), True
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
        return text.encode("utf-8", errors="replace").decode("utf-8"), True
