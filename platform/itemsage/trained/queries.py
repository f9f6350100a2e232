"""The one search-query text path: query strings -> MiniLM sentence features -> the search tower.

The Python API, offline evaluation, training validation and Serve's query encoder all call
:func:`search_query_features`, so they cannot encode a search query differently (before this
module existed, the API and evaluation used the frozen MiniLM for a model whose search queries
were trained through a fine-tuned one).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from itemsage.data.query_tokens import query_token_ids

if TYPE_CHECKING:
    from itemsage.data.text import Vocab
    from itemsage.data.text_encoder import TextEncoder
    from itemsage.model import ItemSageModel

# Short queries: one padded batch of this many is cheap, and bounds memory for long lists.
QUERY_BATCH = 256

_frozen: dict[str, TextEncoder] = {}
_frozen_lock = threading.Lock()


def frozen_text_encoder(device: str | torch.device = "cpu") -> TextEncoder:
    """The packaged, frozen all-MiniLM-L6-v2 (eval mode): one per process and device.

    Shared by every model version whose text encoder was not fine-tuned, and used for item title
    embeddings (preprocessing's ``title_emb``). Building it is locked: two threads asking at once
    must not hold two copies.
    """
    key = str(torch.device(device))
    with _frozen_lock:
        if key not in _frozen:
            from itemsage.data.text_encoder import TextEncoder

            _frozen[key] = TextEncoder().to(key).eval()
        return _frozen[key]


def search_query_features(encoder: TextEncoder, texts: Sequence[str], batch_size: int = QUERY_BATCH) -> torch.Tensor:
    """``[N, 384]`` float32 CPU sentence features of search queries, by ``encoder`` in eval mode.

    ``encoder`` is the model's search-query encoder (``TrainedModel.text_encoder``: the fine-tuned
    MiniLM when the model has one, else the frozen one); during training, the encoder being
    fine-tuned. A blank text gets a zero vector (``TextEncoder.encode``).
    """
    return torch.from_numpy(encoder.encode([str(t) for t in texts], batch_size=max(1, batch_size)))


@torch.inference_mode()
def embed_search_queries(
    model: ItemSageModel, encoder: TextEncoder, texts: Sequence[str], vocab: Vocab | None = None
) -> torch.Tensor:
    """``[N, embedding_dim]`` float32 CPU unit search-query embeddings: features, then the tower.

    ``vocab``: the model's vocabulary, needed when its search tower reads the query's tokens too
    (``model.text_residual``)."""
    feats = search_query_features(encoder, texts)
    dev = next(model.parameters()).device
    tokens = None
    if model.text_residual is not None:
        if vocab is None:
            raise ValueError("this model's search tower reads query tokens (model.text_residual): pass its vocab")
        tokens = query_token_ids(vocab, texts)
    return model.embed_queries("search", feats.to(dev), tokens).float().cpu()
