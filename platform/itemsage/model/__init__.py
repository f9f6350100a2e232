"""ItemSage model: hash embedding, item tower, baselines, query towers, loss, sketch, batching."""

from itemsage.model.baselines import ConcatMLPTower, build_item_tower
from itemsage.model.batch import ItemBatch, ItemFeatureStore
from itemsage.model.cms import CountMinSketch, allgather_ids
from itemsage.model.factory import ItemSageModel, build_model
from itemsage.model.hash_embedding import HashEmbeddingBag
from itemsage.model.hashing import bucket_table, murmur3_32, murmur3_32_int64
from itemsage.model.item_tower import ItemSageTower
from itemsage.model.loss import LogitContext, LogitProcessor, LogQCorrection, SameItemMask, SampledSoftmaxLoss
from itemsage.model.query_towers import QueryProjection, QueryTowers, SearchQueryEncoder
from itemsage.model.sampler import MultiTaskBatcher, largest_remainder

__all__ = [
    "ConcatMLPTower",
    "CountMinSketch",
    "HashEmbeddingBag",
    "ItemBatch",
    "ItemFeatureStore",
    "ItemSageModel",
    "ItemSageTower",
    "LogQCorrection",
    "LogitContext",
    "LogitProcessor",
    "MultiTaskBatcher",
    "QueryProjection",
    "QueryTowers",
    "SameItemMask",
    "SampledSoftmaxLoss",
    "SearchQueryEncoder",
    "allgather_ids",
    "bucket_table",
    "build_item_tower",
    "build_model",
    "largest_remainder",
    "murmur3_32",
    "murmur3_32_int64",
]
