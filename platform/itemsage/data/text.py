"""Text features for the item tower: normalisation, n-gram tokenization and the token vocabulary.

ItemSage (paper, section 3) embeds every text feature as the sum of the embeddings of its word
unigrams, word bigrams and character trigrams; tokens come from vocabularies built from the training
catalog by frequency, and out-of-vocabulary tokens are dropped. This module owns everything up to
the token ids; the hash embedding that turns ids into vectors lives in ``itemsage.model``.

Everything here is deterministic across processes and machines: ids depend only on token counts
and token strings, never on Python's salted ``hash()`` or on set/dict iteration order, so a vocab
built on one Ray worker encodes identically on every other one.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from itemsage.config import TextConfig, to_dict
from itemsage.files import is_uri, write_atomic

# A word is a run of letters/digits; internal apostrophes, hyphens and periods stay inside it so
# "t-shirt", "men's" and "7.5" survive as single words while trailing punctuation ("blue,") is
# dropped. Because "#" can never occur inside a word, it is safe as the trigram boundary marker.
_WORD_RE = re.compile(r"\w+(?:[-'.]\w+)*")
BOUNDARY = "#"

KINDS: tuple[str, ...] = ("unigram", "bigram", "trigram")
_FORMAT = "itemsage-vocab"
_VERSION = 1


def normalize(text: str) -> str:
    """NFKC-normalise, lowercase and collapse whitespace.

    NFKC folds look-alike code points (full-width letters, ligatures, superscripts) that merchants
    paste into titles, so "Ｔ－ｓｈｉｒｔ" and "T-shirt" share tokens.
    """
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def title_embedding_text(fields: Mapping[str, Any], fallback: Sequence[str]) -> str:
    """The text an item's frozen MiniLM title embedding is computed from: its title, or when the
    title is empty (or only whitespace), the non-empty ``fallback`` fields joined by ". " in that
    order (``preprocess.title_fallback``). "" when none has text: the format's "no title".

    One function for preprocessing, catalog featurization and serving, so a served item's title
    embedding is the one its model was trained with.
    """
    title = str(fields.get("title") or "")
    if title.strip():
        return title
    parts = (str(fields.get(name) or "").strip() for name in fallback)
    return ". ".join(p for p in parts if p)


@dataclass
class Tokens:
    """The three token kinds of one text, each in text order (duplicates kept)."""

    unigrams: list[str]
    bigrams: list[str]
    trigrams: list[str]


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(normalize(text))


def _trigrams(words: list[str]) -> Iterator[str]:
    # Padding each word with boundary markers gives prefixes/suffixes their own trigrams ("#bo",
    # "ts#"), which is what lets trigrams match across inflections such as "boot"/"boots".
    for w in words:
        padded = f"{BOUNDARY}{w}{BOUNDARY}"
        for i in range(len(padded) - 2):
            yield padded[i : i + 3]


def tokenize(text: str) -> Tokens:
    """Word unigrams, word bigrams ("a b") and boundary-padded character trigrams of ``text``.

    >>> tokenize("Blue  abc")
    Tokens(unigrams=['blue', 'abc'], bigrams=['blue abc'], trigrams=['#bl', 'blu', 'lue', 'ue#', '#ab', 'abc', 'bc#'])
    """
    words = _words(text)
    return Tokens(
        unigrams=words,
        bigrams=[f"{a} {b}" for a, b in zip(words, words[1:])],
        trigrams=list(_trigrams(words)),
    )


def _ranked(counts: Counter[str], cap: int, min_count: int) -> list[str]:
    """Tokens seen at least ``min_count`` times, most frequent first, ties by token string."""
    kept = [(tok, n) for tok, n in counts.items() if n >= min_count]
    kept.sort(key=lambda tn: (-tn[1], tn[0]))
    return [tok for tok, _ in kept[:cap]]


def _check_config(cfg: TextConfig) -> None:
    for name in ("unigram_vocab_size", "bigram_vocab_size", "trigram_vocab_size"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"text.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.min_count < 1:
        raise ValueError(f"text.min_count must be >= 1, got {cfg.min_count}")
    if cfg.max_tokens_per_field < 0 or cfg.max_chars_per_field < 0:
        raise ValueError("text.max_tokens_per_field and text.max_chars_per_field must be >= 0")


def _read_text(path: str | Path) -> str:
    if is_uri(path):
        from pyarrow import fs as pafs

        filesystem, inner = pafs.FileSystem.from_uri(str(path))
        with filesystem.open_input_stream(inner) as f:
            return f.read().decode("utf-8")
    return Path(path).read_text(encoding="utf-8")


class Vocab:
    """Token -> id maps for the three token kinds, sharing one id space.

    Ids: ``[0, U)`` unigrams, ``[U, U+B)`` bigrams, ``[U+B, U+B+T)`` trigrams, each kind ordered by
    descending training-catalog frequency (ties by token string). The kinds are kept in separate
    maps because the same string can be two kinds at once (the word "abc" and the trigram "abc").
    """

    def __init__(
        self,
        unigrams: list[str],
        bigrams: list[str],
        trigrams: list[str],
        cfg: TextConfig,
    ) -> None:
        self.cfg = cfg  # immutable, so shared rather than copied
        self._tokens: dict[str, list[str]] = {
            "unigram": list(unigrams),
            "bigram": list(bigrams),
            "trigram": list(trigrams),
        }
        self._ids: dict[str, dict[str, int]] = {}
        offset = 0
        for kind in KINDS:
            toks = self._tokens[kind]
            ids = {tok: offset + i for i, tok in enumerate(toks)}
            if len(ids) != len(toks):
                raise ValueError(f"duplicate {kind} tokens in vocab")
            self._ids[kind] = ids
            offset += len(toks)

    @classmethod
    def build(cls, texts: Iterable[str], cfg: TextConfig) -> Vocab:
        """Count tokens over ``texts`` (one pass) and keep the most frequent of each kind.

        Texts are truncated at ``cfg.max_chars_per_field`` exactly as ``encode`` does, so the vocab
        never contains tokens that encoding could not produce.
        """
        _check_config(cfg)
        counts: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
        for text in texts:
            toks = tokenize(text[: cfg.max_chars_per_field])
            counts["unigram"].update(toks.unigrams)
            counts["bigram"].update(toks.bigrams)
            counts["trigram"].update(toks.trigrams)
        return cls(
            unigrams=_ranked(counts["unigram"], cfg.unigram_vocab_size, cfg.min_count),
            bigrams=_ranked(counts["bigram"], cfg.bigram_vocab_size, cfg.min_count),
            trigrams=_ranked(counts["trigram"], cfg.trigram_vocab_size, cfg.min_count),
            cfg=cfg,
        )

    @property
    def sizes(self) -> dict[str, int]:
        """Number of tokens of each kind: ``{"unigram": U, "bigram": B, "trigram": T}``."""
        return {kind: len(self._tokens[kind]) for kind in KINDS}

    @property
    def size(self) -> int:
        """Total number of ids (U + B + T); the row count of the hash embedding's weight table."""
        return sum(self.sizes.values())

    def id_of(self, kind: str, token: str) -> int | None:
        """The id of ``token`` of ``kind`` ("unigram" | "bigram" | "trigram"), or None when OOV."""
        if kind not in self._ids:
            raise ValueError(f"unknown token kind {kind!r}; expected one of {', '.join(KINDS)}")
        return self._ids[kind].get(token)

    def tokens(self, kind: str) -> list[str]:
        """Tokens of ``kind`` in id order (a copy)."""
        if kind not in self._tokens:
            raise ValueError(f"unknown token kind {kind!r}; expected one of {', '.join(KINDS)}")
        return list(self._tokens[kind])

    def encode(self, text: str) -> np.ndarray:
        """Token ids of one text field: unigrams, then bigrams, then trigrams; OOV dropped.

        At most ``cfg.max_tokens_per_field`` ids are kept. Word-level ids go first because they are
        the most specific signal; trigrams mostly help with typos and rare words.
        """
        cap = self.cfg.max_tokens_per_field
        toks = tokenize(text[: self.cfg.max_chars_per_field])
        out: list[int] = []
        for kind, items in zip(KINDS, (toks.unigrams, toks.bigrams, toks.trigrams)):
            ids = self._ids[kind]
            for tok in items:
                if len(out) >= cap:
                    return np.asarray(out, dtype=np.int32)
                idx = ids.get(tok)
                if idx is not None:
                    out.append(idx)
        return np.asarray(out, dtype=np.int32)

    def encode_many(self, texts: Iterable[str]) -> list[np.ndarray]:
        """``encode`` for each text (ragged, so a list rather than one array)."""
        return [self.encode(t) for t in texts]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "config": to_dict(self.cfg),
            "sizes": self.sizes,
            "unigrams": self._tokens["unigram"],
            "bigrams": self._tokens["bigram"],
            "trigrams": self._tokens["trigram"],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocab:
        if data.get("format") != _FORMAT or data.get("version") != _VERSION:
            raise ValueError(
                f"not an {_FORMAT} v{_VERSION} file (format={data.get('format')!r}, version={data.get('version')!r})"
            )
        try:
            cfg = TextConfig(**data["config"])
        except TypeError as e:
            raise ValueError(f"vocab file has an incompatible text config: {e}") from e
        lists = [data["unigrams"], data["bigrams"], data["trigrams"]]
        if not all(isinstance(lst, list) and all(isinstance(t, str) for t in lst) for lst in lists):
            raise ValueError("vocab token lists must be lists of strings")
        vocab = cls(lists[0], lists[1], lists[2], cfg=cfg)
        if "sizes" in data and data["sizes"] != vocab.sizes:
            raise ValueError(f"vocab file sizes {data['sizes']} do not match its tokens {vocab.sizes}")
        return vocab

    def save(self, path: str | Path) -> None:
        """Write the vocab (and the TextConfig that built it) as JSON, atomically."""
        write_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a file written by ``save``; local paths or pyarrow-filesystem URIs."""
        return cls.from_dict(json.loads(_read_text(path)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.cfg == other.cfg and self._tokens == other._tokens

    # Equality is by content, so instances must not be hashable (Python's rule for __eq__ types).
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        s = self.sizes
        return f"Vocab(unigrams={s['unigram']}, bigrams={s['bigram']}, trigrams={s['trigram']})"
