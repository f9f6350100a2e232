"""Studies that train and evaluate in one run (the paper's ablations).

They drive both ``itemsage.train`` and ``itemsage.eval``, so they sit above the two: evaluation
never imports training (docs/architecture.md, enforced by the import-linter contracts).
"""
