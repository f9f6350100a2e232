"""Training on Ray Train: the per-worker loop, the driver, MLflow tracking.

What training writes (checkpoints, bundles, registered versions) and how a trained model is loaded
live in :mod:`itemsage.trained`: ``itemsage.trained.load_trained(uri_or_dir)``.
"""

from itemsage.data.features_read import FeaturesError
from itemsage.train.data import TrainInputError

__all__ = ["FeaturesError", "TrainInputError"]
