"""Training on Ray Train: the per-worker loop, the driver, checkpoints, MLflow tracking, artifacts.

Load a trained model anywhere with :func:`itemsage.train.artifacts.load_trained_model`, which takes
``models:/itemsage/<version>``, ``runs:/<run_id>/model``, a bundle or checkpoint directory, or a
Ray Train run directory; :func:`itemsage.train.artifacts.load_text_encoder` gives the fine-tuned
search-query encoder of a ``model.finetune_text_layers`` run (None for the default frozen encoder).
"""

from itemsage.train.artifacts import ModelNotFoundError, load_text_encoder, load_trained_model
from itemsage.data.features_read import FeaturesError
from itemsage.train.data import TrainInputError

__all__ = ["FeaturesError", "ModelNotFoundError", "TrainInputError", "load_text_encoder", "load_trained_model"]
