"""Data stage: catalog and engagement readers, text tokenization, image features, preprocessing."""
