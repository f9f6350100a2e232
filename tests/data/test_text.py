"""Text normalisation, n-gram tokenization and the token vocabulary (itemsage.data.text)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from itemsage.config import TextConfig
from itemsage.data.text import Tokens, Vocab, normalize, tokenize


def test_normalize_nfkc_lowercase_whitespace() -> None:
    # Full-width letters and the "ﬁ" ligature fold under NFKC; tabs, newlines, NBSP collapse.
    assert normalize("  Ｔ－ＳＨＩＲＴ\t\n ﬁne\u00a0Cotton  ") == "t-shirt fine cotton"
    assert normalize("") == ""
    assert normalize(" \t\n") == ""


def test_tokenize_exact() -> None:
    assert tokenize("Blue  ABC") == Tokens(
        unigrams=["blue", "abc"],
        bigrams=["blue abc"],
        trigrams=["#bl", "blu", "lue", "ue#", "#ab", "abc", "bc#"],
    )
    # Short words still get boundary trigrams; punctuation around words is not part of them.
    assert tokenize("a, ab!") == Tokens(
        unigrams=["a", "ab"], bigrams=["a ab"], trigrams=["#a#", "#ab", "ab#"]
    )
    # Internal hyphens/apostrophes/periods stay inside a word.
    assert tokenize("Men's T-Shirt 7.5").unigrams == ["men's", "t-shirt", "7.5"]
    assert tokenize("") == Tokens([], [], [])
    assert tokenize("   ,;  ") == Tokens([], [], [])


def test_tokenize_keeps_duplicates_in_order() -> None:
    toks = tokenize("red red dress")
    assert toks.unigrams == ["red", "red", "dress"]
    assert toks.bigrams == ["red red", "red dress"]


CORPUS = ["red dress", "red shoes", "blue dress", "red"]


def test_vocab_ids_frequency_ranked_with_string_tiebreak() -> None:
    vocab = Vocab.build(CORPUS, TextConfig())
    # unigram counts: red 3, dress 2, blue 1, shoes 1 (tie -> alphabetical)
    assert vocab.tokens("unigram") == ["red", "dress", "blue", "shoes"]
    assert vocab.tokens("bigram") == ["blue dress", "red dress", "red shoes"]
    u, b = 4, 3
    assert vocab.sizes == {"unigram": u, "bigram": b, "trigram": len(vocab.tokens("trigram"))}
    assert vocab.size == sum(vocab.sizes.values())
    # One id space: bigrams start at U, trigrams at U + B.
    assert vocab.id_of("unigram", "dress") == 1
    assert vocab.id_of("bigram", "blue dress") == u
    assert vocab.id_of("trigram", "#re") == u + b  # "#re", "red", "ed#" occur 3x, tie by string
    assert vocab.id_of("trigram", "ed#") == u + b + 1
    assert vocab.id_of("trigram", "red") == u + b + 2
    # The same string can be a unigram and a trigram with different ids.
    assert vocab.id_of("unigram", "red") == 0


def test_encode_order_oov_dropped() -> None:
    vocab = Vocab.build(CORPUS, TextConfig())
    ids = vocab.encode("Green RED dress")  # "green" and its n-grams are OOV
    expected_words = [vocab.id_of("unigram", "red"), vocab.id_of("unigram", "dress")]
    expected_bigrams = [vocab.id_of("bigram", "red dress")]
    expected_tri = [
        vocab.id_of("trigram", t)
        for t in tokenize("green red dress").trigrams
        if vocab.id_of("trigram", t) is not None
    ]
    assert ids.dtype == np.int32
    assert ids.tolist() == expected_words + expected_bigrams + expected_tri
    assert vocab.id_of("unigram", "green") is None
    assert "#gr" not in vocab.tokens("trigram")
    assert vocab.encode("").shape == (0,)
    assert vocab.encode("zzz qqq").shape == (0,)
    assert [a.tolist() for a in vocab.encode_many(["red", "", "blue"])] == [
        vocab.encode("red").tolist(),
        [],
        vocab.encode("blue").tolist(),
    ]


def test_caps_and_min_count() -> None:
    cfg = TextConfig(unigram_vocab_size=2, bigram_vocab_size=1, trigram_vocab_size=5)
    vocab = Vocab.build(CORPUS, cfg)
    assert vocab.sizes == {"unigram": 2, "bigram": 1, "trigram": 5}
    assert vocab.tokens("unigram") == ["red", "dress"]
    assert vocab.tokens("bigram") == ["blue dress"]
    ids = np.concatenate(vocab.encode_many(CORPUS + ["blue shoes"]))
    assert ids.min() >= 0 and ids.max() < vocab.size

    vocab = Vocab.build(CORPUS, TextConfig(min_count=2))
    assert vocab.tokens("unigram") == ["red", "dress"]
    assert vocab.tokens("bigram") == []  # every bigram occurs once

    with pytest.raises(ValueError, match="min_count"):
        Vocab.build(CORPUS, TextConfig(min_count=0))


def test_max_tokens_and_max_chars() -> None:
    vocab = Vocab.build(["a b c d e"], TextConfig(max_tokens_per_field=3))
    # Unigrams first: the cap keeps the first three words, no bigrams/trigrams.
    assert vocab.encode("a b c d e").tolist() == [
        vocab.id_of("unigram", w) for w in ["a", "b", "c"]
    ]
    vocab = Vocab.build(["red dress"], TextConfig(max_tokens_per_field=4))
    # 2 words, 1 bigram, then only the first trigram fits. Ids: "dress" 0, "red" 1 (tie broken
    # alphabetically), bigram 2, trigrams from 3 in alphabetical order ("#dr" 3, "#re" 4, ...).
    assert vocab.encode("red dress").tolist() == [1, 0, 2, 4]

    vocab = Vocab.build(["abcdef ghij"], TextConfig(max_chars_per_field=4))
    # The text is cut to "abcd" before tokenizing, in build as in encode.
    assert vocab.tokens("unigram") == ["abcd"]
    assert vocab.encode("abcdef ghij").tolist() == vocab.encode("abcd").tolist()


def test_save_load_roundtrip(tmp_path: Path) -> None:
    cfg = TextConfig(unigram_vocab_size=50, min_count=1, max_tokens_per_field=17)
    vocab = Vocab.build(CORPUS + ["Café crème ＴＥＥ"], cfg)
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["vocab.json"]  # no temp files left
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["config"]["max_tokens_per_field"] == 17
    loaded = Vocab.load(path)
    assert loaded == vocab
    assert loaded.cfg == cfg
    for text in CORPUS + ["café tee", "unknown"]:
        assert loaded.encode(text).tolist() == vocab.encode(text).tolist()

    # URIs go through pyarrow filesystems (file:// here, s3:// in a cluster).
    uri = (tmp_path / "uri_vocab.json").as_uri()
    vocab.save(uri)
    assert Vocab.load(uri) == vocab

    assert vocab != Vocab.build(CORPUS, TextConfig(min_count=2))
    assert vocab != Vocab.build(CORPUS + ["Café crème ＴＥＥ"], TextConfig())  # config differs


def test_load_rejects_foreign_json(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"unigrams": []}))
    with pytest.raises(ValueError, match="itemsage-vocab"):
        Vocab.load(bad)


_CHILD = r"""
import json, sys
from itemsage.config import TextConfig
from itemsage.data.text import Vocab
corpus = json.loads(sys.stdin.read())
vocab = Vocab.build(corpus["texts"], TextConfig(**corpus["cfg"]))
print(json.dumps({"vocab": vocab.to_dict(), "enc": [a.tolist() for a in vocab.encode_many(corpus["probe"])]}))
"""


def _corpus() -> dict:
    # Many count ties, and caps below the number of tied tokens: which tokens make the cut then
    # depends only on the tie-break, so any hash/set-order dependence shows up as a diff.
    words = [f"w{i:03d}x" for i in range(120)]
    texts = [" ".join(words[i : i + 3]) for i in range(0, 120, 3)] + ["common common word"] * 3
    cfg = {"unigram_vocab_size": 50, "bigram_vocab_size": 30, "trigram_vocab_size": 70}
    return {"texts": texts, "cfg": cfg, "probe": texts[:10] + ["common word w001x w119x"]}


def test_deterministic_across_processes() -> None:
    corpus = _corpus()
    results = []
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(corpus),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        results.append(json.loads(proc.stdout))
    vocab = Vocab.build(corpus["texts"], TextConfig(**corpus["cfg"]))
    here = {"vocab": vocab.to_dict(), "enc": [a.tolist() for a in vocab.encode_many(corpus["probe"])]}
    assert results[0] == results[1] == json.loads(json.dumps(here))
    assert vocab.sizes == {"unigram": 50, "bigram": 30, "trigram": 70}
