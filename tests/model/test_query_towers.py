"""Per-surface query projections and the raw-text search query encoder wrapper."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from itemsage.model.query_towers import QueryTowers, SearchQueryEncoder


class StandInTextEncoder(nn.Module):
    """Duck-typed like itemsage.data.text_encoder.TextEncoder: forward(ids, mask) -> [B, 384]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 384)
        self.lower = nn.Linear(384, 384)
        self.top = nn.Linear(384, 384)
        self.dropout = nn.Dropout(0.5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.top(torch.relu(self.lower(self.embed(input_ids)))))
        m = attention_mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1).clamp(min=1)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        n = max(len(t.split()) for t in texts)
        ids = torch.zeros(len(texts), n, dtype=torch.long)
        mask = torch.zeros(len(texts), n, dtype=torch.long)
        for i, t in enumerate(texts):
            for j, w in enumerate(t.split()):
                ids[i, j], mask[i, j] = sum(map(ord, w)) % 50, 1
        return {"input_ids": ids, "attention_mask": mask}


def test_each_surface_has_its_own_projection() -> None:
    torch.manual_seed(0)
    towers = QueryTowers(image_dim=20, text_dim=384, out_dim=16, hidden_dim=32)
    for surface, dim in (("search", 384), ("closeup", 20), ("home", 404)):
        out = towers(surface, torch.randn(5, dim))
        assert out.shape == (5, 16)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    with pytest.raises(ValueError):
        towers("closeup", torch.randn(2, 384))
    with pytest.raises(KeyError):
        towers("email", torch.randn(2, 384))
    linear = QueryTowers(image_dim=20, out_dim=16, hidden_dim=0)
    assert sum(isinstance(m, nn.Linear) for m in linear.projection("search").modules()) == 1


def test_residual_projection_starts_ranking_like_its_input_and_trains() -> None:
    torch.manual_seed(0)
    proj = QueryTowers(image_dim=20, text_dim=384, out_dim=256, hidden_dim=64, residual=True).projection("search")
    # Clustered unit vectors, like sentence embeddings of near-duplicate titles.
    centers = torch.randn(8, 384)
    x = nn.functional.normalize(centers.repeat_interleave(6, 0) + 0.8 * torch.randn(48, 384), dim=1)
    ln = nn.functional.layer_norm(x, (384,))
    before = nn.functional.normalize(ln, dim=1) @ nn.functional.normalize(ln, dim=1).T
    after = proj(x) @ proj(x).T
    off = ~torch.eye(48, dtype=torch.bool)
    # A 384 -> 256 orthogonal map keeps cosines up to Johnson-Lindenstrauss noise.
    assert (after[off] - before[off]).abs().max() < 0.15
    assert torch.corrcoef(torch.stack([after[off], before[off]]))[0, 1] > 0.98
    # The MLP starts at zero but is not frozen: both paths get gradients.
    (proj(x)[:, 0]).sum().backward()
    assert proj.skip is not None and proj.skip.weight.grad.abs().sum() > 0
    assert proj.net[-1].weight.grad.abs().sum() > 0
    plain = QueryTowers(image_dim=20, out_dim=16, hidden_dim=32).projection("search")
    assert plain.skip is None


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval() -> None:
    torch.manual_seed(0)
    towers = QueryTowers(image_dim=20, out_dim=16, hidden_dim=32)
    encoder = StandInTextEncoder()
    wrapper = SearchQueryEncoder(encoder, towers.projection("search")).train()
    assert not encoder.training  # dropout off in a frozen encoder
    out = wrapper.encode(["red dress", "blue running shoes"])
    assert out.shape == (2, 16)
    out.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert all(p.grad is not None for p in towers.projection("search").parameters())
    # Deterministic despite train(): the frozen encoder's dropout is off.
    torch.testing.assert_close(wrapper.encode(["red dress"]), wrapper.encode(["red dress"]))


def test_partially_trainable_encoder_trains_only_its_unfrozen_layers() -> None:
    torch.manual_seed(0)
    towers = QueryTowers(image_dim=20, out_dim=16, hidden_dim=32)
    encoder = StandInTextEncoder()
    encoder.embed.requires_grad_(False)
    encoder.lower.requires_grad_(False)  # SearchSage-style: only the top layer fine-tunes
    wrapper = SearchQueryEncoder(encoder, towers.projection("search"), freeze_encoder=False)
    wrapper.encode(["red dress"]).sum().backward()
    assert encoder.top.weight.grad is not None and encoder.top.weight.grad.abs().sum() > 0
    assert encoder.lower.weight.grad is None and encoder.embed.weight.grad is None
