"""An empty title's MiniLM embedding text (``preprocess.title_fallback``): the function, the text
stage's rows, the query reuse, the config type and the manifests that carry it to serving."""

from __future__ import annotations

import typing

import numpy as np
import pandas as pd
import pytest

from itemsage.config import TEXT_FIELDS, ConfigError, FallbackField, PreprocessConfig, from_dict
from itemsage.data.featurize import embedding_texts, text_rows
from itemsage.data.pipeline import queries_needing_minilm
from itemsage.data.text import title_embedding_text
from itemsage.manifest import ManifestFields

FALLBACK = ("brand", "category_path", "description")


def items_frame(rows: list[dict[str, str]]) -> pd.DataFrame:
    full = [{f: r.get(f, "") for f in TEXT_FIELDS} for r in rows]
    frame = pd.DataFrame(full, columns=list(TEXT_FIELDS))
    frame.insert(0, "item_idx", np.arange(len(rows), dtype=np.int64))
    return frame


def test_a_title_is_its_own_text_whatever_the_fallback() -> None:
    fields = {"title": "Essence (1-year)", "brand": "Essence", "description": "Women's magazine."}
    assert title_embedding_text(fields, FALLBACK) == "Essence (1-year)"


def test_an_empty_or_blank_title_falls_back_in_order_skipping_empty_fields() -> None:
    fields = {"title": "  ", "brand": "AirAge Publishing", "category_path": "", "description": "FLIGHT JOURNAL covers."}
    assert title_embedding_text(fields, FALLBACK) == "AirAge Publishing. FLIGHT JOURNAL covers."
    assert title_embedding_text(fields, ("description", "brand")) == "FLIGHT JOURNAL covers.. AirAge Publishing"
    assert title_embedding_text({"brand": "X"}, FALLBACK) == "X"  # no title key at all


def test_no_fallback_or_nothing_to_fall_back_on_is_the_empty_text() -> None:
    fields = {"title": "", "brand": "AirAge Publishing"}
    assert title_embedding_text(fields, ()) == ""
    assert title_embedding_text({"title": "", "brand": None, "description": ""}, FALLBACK) == ""


def test_text_rows_carry_each_items_embedding_text_and_queries_their_own() -> None:
    items = items_frame(
        [
            {"title": "Glory Days Gift Card", "brand": "Days of Glory"},
            {"title": "", "brand": "Avtech Media", "category_path": "Magazine Subscriptions > Technology"},
        ]
    )
    queries = pd.DataFrame({"query_idx": [0], "text": ["gift card"]})
    rows = text_rows(items, queries, FALLBACK)
    assert rows["embed_text"].tolist() == [
        "Glory Days Gift Card",
        "Avtech Media. Magazine Subscriptions > Technology",
        "gift card",
    ]
    # The title field itself (its tokens) is unchanged: the fallback is for the embedding only.
    assert rows["title"].tolist() == ["Glory Days Gift Card", "", "gift card"]
    assert text_rows(items, queries)["embed_text"].tolist() == ["Glory Days Gift Card", "", "gift card"]
    assert embedding_texts(items, FALLBACK) == rows["embed_text"].tolist()[:2]


def test_a_query_reuses_the_embedding_of_the_item_whose_embedding_text_it_is() -> None:
    items = items_frame([{"title": "A card"}, {"title": "", "brand": "Avtech Media"}])
    queries = pd.DataFrame({"query_idx": [0, 1, 2], "text": ["A card", "Avtech Media", ""]})
    todo, same = queries_needing_minilm(queries, items, ("brand",))
    assert same.tolist() == [0, 1, -1]
    assert todo["query_idx"].tolist() == [2]
    # Without the fallback the second item's embedding text is "" (the zero vector), so the empty
    # query reuses it and "Avtech Media" needs its own.
    todo, same = queries_needing_minilm(queries, items)
    assert same.tolist() == [0, -1, 1]
    assert todo["query_idx"].tolist() == [1]


def test_config_fields_are_every_text_field_but_the_title() -> None:
    assert typing.get_args(FallbackField) == TEXT_FIELDS[1:]
    assert from_dict(PreprocessConfig, {"title_fallback": ["description"]}).title_fallback == ["description"]
    assert from_dict(PreprocessConfig, {"title_fallback": []}).title_fallback == []
    for bad in (["title"], ["colour"]):
        with pytest.raises(ConfigError, match="title_fallback"):
            from_dict(PreprocessConfig, {"title_fallback": bad})


class _Manifest(ManifestFields):
    def __init__(self, manifest: dict) -> None:
        self.manifest = manifest


def test_manifest_title_fallback_defaults_to_none_for_older_models() -> None:
    assert _Manifest({"title_fallback": ["brand", "description"]}).title_fallback == ("brand", "description")
    assert _Manifest({}).title_fallback == ()


def test_the_model_manifest_carries_the_features_fallback_to_serving() -> None:
    from itemsage.config import PipelineConfig, TextConfig
    from itemsage.data.text import Vocab
    from itemsage.trained.bundle import model_manifest

    vocab = Vocab.build(["gift card"], TextConfig())
    features = {"image_dim": 8, "backbone_weights": None}
    made = model_manifest(PipelineConfig(), {**features, "title_fallback": ["brand"]}, vocab, step=1)
    assert _Manifest(made).title_fallback == ("brand",)
    # Features written before the setting existed embedded an empty title as the zero vector.
    assert model_manifest(PipelineConfig(), features, vocab, step=1)["title_fallback"] == []
