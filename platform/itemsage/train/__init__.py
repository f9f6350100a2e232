"""Training on Ray Train: the per-worker loop, the driver, checkpoints, MLflow tracking, artifacts.

Load a trained model anywhere with :func:`itemsage.train.artifacts.load_trained_model`, which takes
``models:/itemsage/<version>``, ``runs:/<run_id>/model``, a bundle or checkpoint directory, or a
Ray Train run directory.
"""

from itemsage.train.artifacts import ModelNotFoundError, load_trained_model
from itemsage.train.data import TrainInputError

__all__ = ["ModelNotFoundError", "TrainInputError", "load_trained_model"]
