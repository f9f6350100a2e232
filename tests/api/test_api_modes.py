"""Search modes from Python: ``ItemSage.build_index`` builds the lexical index beside the vectors,
``ItemSage.search`` takes ``mode`` (dense | lexical | hybrid) as ``/search`` does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from itemsage.api import ItemSage, SearchModeError
from itemsage.config import TEXT_FIELDS, HybridConfig
from itemsage.index import load_index
from itemsage.index.hybrid import fuse


def words_of(features, item_id: str) -> set[str]:
    """The item's words as the lexical index reads them (every text field of the catalog)."""
    row = features.items.set_index("item_id").loc[item_id]
    text = " ".join(str(row.get(f) or "") for f in TEXT_FIELDS if f in row.index)
    return {w.lower() for w in re.findall(r"\w\w+", text)}


def test_each_mode(sage: ItemSage, indexed) -> None:
    features, index = indexed
    lexical = sage.search(index, ["red dress", "black watch"], k=10, mode="lexical")
    for query, row in zip(["red dress", "black watch"], lexical):
        assert row and all(words_of(features, i) & set(query.split()) for i, _ in row)
        assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
    cfg = HybridConfig()
    dense_deep = sage.search(index, "red dress", k=cfg.depth, mode="dense")[0]
    lexical_deep = sage.search(index, "red dress", k=cfg.depth, mode="lexical")[0]
    want = fuse([i for i, _ in dense_deep], [i for i, _ in lexical_deep], cfg)[:10]
    assert sage.search(index, "red dress", k=10, mode="hybrid")[0] == want
    default = sage.search(index, "red dress", k=10)[0]
    assert default == sage.search(index, "red dress", k=10, mode=cfg.default_mode)[0]


def test_modes_with_filters_and_after_a_reload(sage: ItemSage, indexed, tmp_path: Path) -> None:
    features, index = indexed
    items = features.items.set_index("item_id")
    gender = items["size_type"].value_counts().index[1]
    for mode in ("lexical", "hybrid"):
        rows = sage.search(index, ["shirt", "shoes"], k=20, filters={"gender": gender}, mode=mode)
        assert any(rows) and all(items.loc[i, "size_type"] == gender for row in rows for i, _ in row)
    again = load_index(index.save(tmp_path / "index"), use_gpu=False)
    for mode in ("lexical", "hybrid"):
        assert sage.search(again, "blue jeans", k=10, mode=mode) == sage.search(index, "blue jeans", k=10, mode=mode)


def test_bad_modes_raise(sage: ItemSage, indexed) -> None:
    features, index = indexed
    q = sage.embed_text_queries(["shoes"])
    assert sage.search(index, q, k=3)[0]  # an embedding query: dense, whatever the default
    with pytest.raises(SearchModeError, match="needs query texts"):
        sage.search(index, q, k=3, mode="lexical")
    with pytest.raises(SearchModeError, match="unknown search mode"):
        sage.search(index, "shoes", mode="sparse")
    plain = sage.build_index(features, "Flat", lexical=False)
    assert sage.search(plain, "shoes", k=3)[0]  # the default falls back to dense
    with pytest.raises(SearchModeError, match="without one"):
        sage.search(plain, "shoes", mode="hybrid")
