"""Search queries' text as vocabulary token ids, for models whose search tower reads tokens too.

With ``model.text_residual`` a search query goes through the same hashed-token path as an item's
text (``itemsage.model.text_residual``), so it must be tokenized exactly as item text is
(:meth:`Vocab.encode`: word unigrams, bigrams, character trigrams, out-of-vocabulary dropped) with the
model's own vocabulary. Training, evaluation, the Python API and Serve all call
:func:`query_token_ids`, so none of them can tokenize a query differently.

A batch of queries is ``[n, L]`` int64 ids padded with -1 (out of vocabulary: the hash embedding
skips it), ``L`` the longest query's token count in the batch (at least 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from itemsage.data.text import Vocab

PAD = -1


def pad_token_lists(lists: Sequence[np.ndarray]) -> torch.Tensor:
    """Token-id arrays -> ``[n, max(len, 1)]`` int64, padded with :data:`PAD`."""
    length = max([len(x) for x in lists] + [1])
    out = np.full((len(lists), length), PAD, dtype=np.int64)
    for i, ids in enumerate(lists):
        out[i, : len(ids)] = ids
    return torch.from_numpy(out)


def query_token_ids(vocab: Vocab, texts: Sequence[str]) -> torch.Tensor:
    """``[n, L]`` padded token ids of ``texts`` under ``vocab`` (a text with no known token: all PAD)."""
    return pad_token_lists([vocab.encode(str(t)) for t in texts])


class QueryTokenTable:
    """Every search query's token ids (``queries.parquet`` text, by ``query_idx``), flat in memory;
    :meth:`rows` pads the ones a batch needs."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        if offsets.ndim != 1 or offsets.size == 0 or int(offsets[-1]) != ids.size:
            raise ValueError("offsets must start each query's ids and end at len(ids)")
        self.ids = torch.from_numpy(ids.astype(np.int64))
        self.offsets = torch.from_numpy(offsets.astype(np.int64))

    @classmethod
    def encode(cls, vocab: Vocab, texts: Sequence[str]) -> QueryTokenTable:
        lists = [vocab.encode(str(t)) for t in texts]
        offsets = np.zeros(len(lists) + 1, np.int64)
        np.cumsum([len(x) for x in lists], out=offsets[1:])
        ids = np.concatenate(lists) if lists else np.zeros(0, np.int64)
        return cls(ids, offsets)

    @property
    def num_queries(self) -> int:
        return int(self.offsets.numel() - 1)

    def rows(self, keys: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``[len(keys), L]`` padded token ids of the queries ``keys`` (``query_idx``), vectorised."""
        k = torch.as_tensor(np.asarray(keys), dtype=torch.int64).reshape(-1)
        if k.numel() and (int(k.min()) < 0 or int(k.max()) >= self.num_queries):
            raise IndexError(f"query_idx out of range [0, {self.num_queries})")
        starts = self.offsets[k]
        lengths = self.offsets[k + 1] - starts
        width = max(int(lengths.max()) if k.numel() else 0, 1)
        col = torch.arange(width)
        present = col.unsqueeze(0) < lengths.unsqueeze(1)
        src = (starts.unsqueeze(1) + col).clamp(max=max(self.ids.numel() - 1, 0))
        gathered = self.ids[src] if self.ids.numel() else torch.zeros_like(src)
        return torch.where(present, gathered, torch.full_like(gathered, PAD))
