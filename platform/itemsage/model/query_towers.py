"""Query towers: one light learned projection per surface into the shared 256-d item space.

In the paper the query embeddings already exist and stay frozen: closeup uses the viewed product's
PinSage image embedding, search uses SearchSage (a text encoder trained into that image space) and
home uses PinnerSage user embeddings; ItemSage is trained to be *compatible* with them. Our frozen
backbones (EfficientNet/ResNet image features, MiniLM sentence embeddings) live in different spaces and
dimensions, so each surface gets a small trainable projection while the backbones stay frozen. This
is one of the project's two deliberate deviations from the paper (README.md, "Two deliberate
deviations from the paper").

The backbones are deliberately *not* inside these modules: their outputs are precomputed once by
preprocessing (``title_emb``/``text_emb``/``image_feats``/``user_feat`` in the features directory), so
training never pays for a backbone forward pass, and serving runs the same backbone followed by the
same projection. :class:`SearchQueryEncoder` covers the one case that needs a backbone in the loop:
raw query text at serving time, or SearchSage-style fine-tuning of the text encoder's top layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from itemsage.config import SURFACES

TEXT_QUERY_DIM = 384


class QueryProjection(nn.Module):
    """``LayerNorm -> Linear -> GELU -> Linear -> L2 normalise`` (or ``LayerNorm -> Linear`` when
    ``hidden_dim`` is 0).

    The input LayerNorm matters because the frozen features come on very different scales (unit
    MiniLM vectors vs. non-negative pooled CNN activations); the hidden layer gives the frozen query
    side a little non-linear capacity to meet the item tower.

    ``residual``: add a linear map initialised as a scaled random orthogonal projection, with the
    MLP's output layer starting at zero. An orthogonal projection to 256 dimensions keeps inner
    products (Johnson-Lindenstrauss), so at step 0 two inputs are as similar as their frozen
    features are, and training refines that similarity instead of having to find it again from a
    random start (Shopee val Recall@10 of held-out products: see docs/quality.md).
    """

    def __init__(self, in_dim: int, out_dim: int = 256, hidden_dim: int = 512, residual: bool = False) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        if hidden_dim > 0:
            layers += [nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)]
        else:
            layers += [nn.Linear(in_dim, out_dim)]
        self.net = nn.Sequential(*layers)
        self.skip: nn.Linear | None = None
        if residual:
            self.skip = nn.Linear(in_dim, out_dim, bias=False)
            nn.init.orthogonal_(self.skip.weight)
            # Orthonormal rows keep out/in of a vector's squared norm; rescale to keep all of it.
            with torch.no_grad():
                self.skip.weight.mul_((in_dim / out_dim) ** 0.5 if out_dim < in_dim else 1.0)
            last = self.net[-1]
            assert isinstance(last, nn.Linear)  # built just above; narrows the type for mypy
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.shape[-1] != self.in_dim:
            raise ValueError(f"expected {self.in_dim}-d query features, got {feats.shape[-1]}")
        norm = self.net[0]
        assert isinstance(norm, nn.LayerNorm)  # built in __init__; narrows the type for mypy
        normed = norm(feats.to(norm.weight.dtype))
        out = self.net[1:](normed)
        if self.skip is not None:
            out = out + self.skip(normed)
        return F.normalize(out, dim=-1)


def surface_input_dims(image_dim: int, text_dim: int = TEXT_QUERY_DIM) -> dict[str, int]:
    """Frozen query-feature width per surface (feature-format.md, "Frozen query features")."""
    return {"search": text_dim, "closeup": image_dim, "home": image_dim + text_dim}


class QueryTowers(nn.Module):
    """One :class:`QueryProjection` per surface; ``forward(surface, feats) -> [B, out_dim]``.

    Args:
        image_dim: image backbone feature width (closeup queries; the first part of home features).
        text_dim: MiniLM sentence-embedding width (search queries; the second part of home features).
        out_dim: the shared embedding width (``ModelConfig.embedding_dim``).
        hidden_dim: projection MLP width; 0 gives a single linear map.
        residual: start each projection as a similarity-preserving linear map (QueryProjection).
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int = TEXT_QUERY_DIM,
        out_dim: int = 256,
        hidden_dim: int = 512,
        residual: bool = False,
    ) -> None:
        super().__init__()
        dims = surface_input_dims(image_dim, text_dim)
        self.projections = nn.ModuleDict({s: QueryProjection(dims[s], out_dim, hidden_dim, residual) for s in SURFACES})

    def projection(self, surface: str) -> QueryProjection:
        if surface not in self.projections:
            raise KeyError(f"unknown surface {surface!r}; expected one of {tuple(self.projections)}")
        return self.projections[surface]  # type: ignore[return-value]

    def forward(self, surface: str, feats: torch.Tensor) -> torch.Tensor:
        return self.projection(surface)(feats)


class SearchQueryEncoder(nn.Module):
    """Raw query text -> 256-d search query embedding: text encoder, then the search projection.

    Args:
        text_encoder: duck-typed: ``forward(input_ids, attention_mask) -> [B, 384]`` and
            ``tokenize(texts) -> {"input_ids", "attention_mask"}``.
        projection: usually ``QueryTowers.projection("search")``, shared with training.
        freeze_encoder: True (the default, the paper's frozen query tower) freezes every encoder
            parameter, keeps the encoder in eval mode and runs it under ``no_grad``. False leaves the
            encoder's own ``requires_grad`` flags alone, for SearchSage-style fine-tuning of its top
            layers (``ModelConfig.finetune_text_layers``); only those layers then get gradients.
    """

    def __init__(self, text_encoder: nn.Module, projection: nn.Module, freeze_encoder: bool = True) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.projection = projection
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            text_encoder.requires_grad_(False)
            text_encoder.eval()

    def train(self, mode: bool = True) -> SearchQueryEncoder:
        super().train(mode)
        if self.freeze_encoder:
            self.text_encoder.eval()  # no dropout in a frozen encoder, whatever the wrapper's mode
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                feats = self.text_encoder(input_ids, attention_mask)
        else:
            feats = self.text_encoder(input_ids, attention_mask)
        return self.projection(feats)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenize with the encoder's own tokenizer, then :meth:`forward`."""
        tok = self.text_encoder.tokenize(list(texts))  # type: ignore[operator]
        device = next(self.projection.parameters()).device
        return self.forward(tok["input_ids"].to(device), tok["attention_mask"].to(device))
