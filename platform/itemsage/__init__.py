"""ItemSage product embeddings (Baltescu et al., KDD 2022) trained and served on Ray."""

__version__ = "0.1.0"
