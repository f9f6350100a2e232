"""Typed configuration for every stage, with every default in this one file.

Each YAML section is a frozen pydantic model that forbids unknown keys.
``load_config(PipelineConfig, "x.yaml", ["train.lr=1e-3"])`` reads a YAML file, applies dotted
command-line overrides and checks every key and type, so a typo fails fast, before any Ray or
MLflow work, with the key's full dotted name and the keys allowed next to it instead of being
silently ignored. Checks that need more than one key or the data (batch size vs. pairs, GPUs vs.
the cluster) live with the stage that owns them (``train.trainer.check_config``,
``data.pipeline.validate_config``).

Configs are immutable: ``cfg.replace(lr=0.01)`` returns a checked copy (the counterpart of
``dataclasses.replace``).
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

# The 12 ItemSage text features (paper, section 3). Order matters: it is the order of the text
# groups in the item tower's input sequence and of the ``tok_<field>`` feature columns.
TEXT_FIELDS: tuple[str, ...] = (
    "title",
    "description",
    "merchant_domain",
    "link_text",
    "category_path",
    "product_types",
    "brand",
    "colors",
    "materials",
    "patterns",
    "size",
    "size_type",
)

SURFACES: tuple[str, ...] = ("search", "closeup", "home")

# Width of the frozen MiniLM sentence features (titles, search queries).
TEXT_QUERY_DIM = 384

# A seed run's name ends in its seed (train.name=<name>_seed<N>, experiments/seeds.py).
_SEED_SUFFIX = re.compile(r"[_-]seed\d+$")


def config_label(name: str) -> str:
    """``shopee_seed2`` -> ``shopee``: the name of the configuration a seed run belongs to."""
    return _SEED_SUFFIX.sub("", name) or name


ACTIONS: tuple[str, ...] = ("click", "save", "add_to_cart", "checkout")


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or a value is out of range."""


# Closed sets of choices: a wrong value fails at load time with the allowed ones in the message.
LrDecay = Literal["cosine", "linear", "constant"]
ValCatalog = Literal["split", "all"]
TextInit = Literal["random", "idf"]
HomeQuery = Literal["tower", "items"]
Optimizer = Literal["adamw", "lamb"]
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
LR_DECAYS: tuple[str, ...] = typing.get_args(LrDecay)
VAL_CATALOGS: tuple[str, ...] = typing.get_args(ValCatalog)
PLACEMENT_STRATEGIES: tuple[str, ...] = typing.get_args(PlacementStrategy)
# The text fields an empty title may fall back to for its MiniLM embedding (every field but the
# title itself; PreprocessConfig.title_fallback).
FallbackField = Literal[
    "description",
    "merchant_domain",
    "link_text",
    "category_path",
    "product_types",
    "brand",
    "colors",
    "materials",
    "patterns",
    "size",
    "size_type",
]

# "auto" | "true" | "false"; YAML's unquoted true/false (or an override train.use_gpu=true) is
# accepted for the last two rather than refused as a non-string.
GpuChoice = Annotated[
    Literal["auto", "true", "false"], BeforeValidator(lambda v: str(v).lower() if isinstance(v, bool) else v)
]
# YAML has no tuples: a two-element list is accepted for a pair (strict mode alone refuses it).
Pair = Annotated[tuple[int, int], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]


class Section(BaseModel):
    """One YAML section: unknown keys refused, no silent type conversion (strict: ``"3"`` is not
    an int and ``1`` is not ``true``; an int is still a valid float), immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and checked like a loaded config (``dataclasses.replace``)."""
        return from_dict(type(self), {**dict(self), **changes})


class TextConfig(Section):
    # Paper sizes (200k unigrams, 1M bigrams, 64k char-trigrams). Catalogs smaller than that simply
    # produce smaller vocabularies; the cap only bites on large catalogs.
    unigram_vocab_size: int = 200_000
    bigram_vocab_size: int = 1_000_000
    trigram_vocab_size: int = 64_000
    # Tokens seen fewer times than this in the training catalog are left out of the vocab (OOV).
    min_count: int = 1
    # Long descriptions would dominate memory; ItemSage sums token embeddings, so the first N
    # tokens of a field carry nearly all of the signal.
    max_tokens_per_field: int = 256
    # Fields longer than this many characters are truncated before tokenization (huge-field guard).
    max_chars_per_field: int = 10_000


class ImageConfig(Section):
    # "efficientnet-lite0" (packaged ImageNet weights, 1280-d) or "resnet50" (2048-d, needs weights_path).
    backbone: str = "efficientnet-lite0"
    weights_path: str | None = None
    max_images_per_item: int = 20
    batch_size: int = 32
    # Ray Data actor-pool size for the backbone; 1 keeps a 2-core laptop responsive.
    concurrency: int = 1
    # Images larger than this many pixels are rejected (decompression-bomb guard).
    max_pixels: int = 40_000_000
    # Torch intra-op threads per backbone actor; 0 lets torch decide.
    num_threads: int = 0


class EngagementConfig(Section):
    """Synthetic engagement generator (used when a catalog has no engagement log)."""

    seed: int = 0
    num_users: int = 500
    # Pairs per surface before the action funnel is applied.
    search_pairs: int = 6_000
    closeup_pairs: int = 6_000
    home_pairs: int = 4_000
    # Zipf-like exponent of item popularity: a few items get most engagement, as in real logs.
    popularity_exponent: float = 1.0
    # Share of search and closeup engagements drawn among the exact matches only (search: items
    # with every facet the query states; closeup: items of the viewed item's kind, colour and
    # gender), when there are any; the rest keep the popularity x 4^-misses (x 3 per shared facet)
    # draw, which can also pick an exact match. Without it the Zipf popularity spread (1000x
    # within a kind) outweighs the facet weights: on the fashion catalog only 36% of search and
    # 26% of closeup engagements matched, where a result list for "navy blue shirts for men" is
    # mostly navy blue men's shirts. 0 gives the earlier rule.
    facet_match_share: float = 0.85
    # The funnel: of all engagements, this share is each action (dense clicks, sparse checkouts).
    action_shares: dict[str, float] = {"click": 0.70, "save": 0.15, "add_to_cart": 0.10, "checkout": 0.05}
    # User history length for home-feed queries.
    history_length: int = 8
    # How pairs are held out for validation / test. "item": item-disjoint, the fractions are of
    # items, and held-out items are never seen in training (cold-start items: the strict protocol,
    # where a model's knowledge of seen items' popularity cannot help). "time": the fractions are
    # of pairs, the latest by timestamp (future engagement: the paper's offline protocol).
    split: str = "item"
    val_fraction: float = 0.1
    test_fraction: float = 0.1


class PreprocessConfig(Section):
    catalog: str = "data/sample/fashion"
    # "auto" detects fashion / shopee / generic / amazon from the files present.
    layout: str = "auto"
    # Optional real engagement log (Parquet/JSONL/CSV). When empty: Shopee label groups give real
    # pairs; other catalogs get synthetic engagements.
    engagements: str = ""
    # amazon layout: a folder where the products' imageURL basenames are looked up as local image
    # files (never fetched from the network). Unset: Amazon items are text-only.
    images_dir: str | None = None
    # amazon layout: an optional 5-core reviews file or folder (JSON lines with reviewerID, asin,
    # unixReviewTime); its reviews become home pairs and the users' histories.
    reviews: str = ""
    # The frozen MiniLM title embedding (items.parquet title_emb, the start of the item tower's title
    # skip and the "frozen MiniLM" baseline) of an item whose title is empty is computed from these
    # fields instead, the non-empty ones joined by ". " in this order (MiniLM reads the first 64
    # word pieces). Without it such an item's embedding is the zero vector: 1,732 of 1,852 Amazon
    # Magazine_Subscriptions titles are a broken HTML fragment, read as missing. The token fields
    # are unchanged (the title's tokens stay empty). Recorded in the features and model manifests
    # so serving embeds a new item's title the same way. Empty list: no fallback.
    title_fallback: list[FallbackField] = ["brand", "category_path", "description"]
    output: str = "artifacts/features"
    text: TextConfig = TextConfig()
    image: ImageConfig = ImageConfig()
    engagement: EngagementConfig = EngagementConfig()
    # Rows per Ray Data block for the text/image stages.
    rows_per_block: int = 256
    # Ray Data hash partitions of the catalog-wide steps (duplicate ids, label-group and link
    # pairs, token counts): each partition is one task's share, so raise it with the catalog.
    partitions: int = 8
    # Lines per block of the streaming catalog read (one read task per file).
    read_lines_per_block: int = 8192


class ModelConfig(Section):
    # "itemsage" (transformer over feature groups) or "mlp" (the paper's concat-MLP baseline).
    arch: str = "itemsage"
    use_image: bool = True
    use_text: bool = True
    embedding_dim: int = 256
    hidden_dim: int = 512
    num_heads: int = 8
    num_layers: int = 1
    ffn_dim: int = 2048
    head_hidden_dim: int = 1024
    dropout: float = 0.1
    max_images: int = 20
    # Shared hash embedding table E (paper: 100,000 x 256).
    hash_buckets: int = 100_000
    hash_dim: int = 256
    hash_seeds: Pair = (17, 31)
    # Fine-tune the top N layers of the MiniLM query encoder (SearchSage-style); 0 = frozen.
    finetune_text_layers: int = 0
    # Feed the frozen MiniLM title embedding (items.parquet title_emb) to the item tower as one more
    # feature group, next to the hashed tokens. The paper's tower sees only hashed text; a pretrained
    # sentence embedding gives it word meaning it cannot learn from a small catalog's engagement
    # (fashion val Recall@10, search: 0.51 without, 0.60 with it and title_skip; docs/quality.md).
    use_title_embedding: bool = True
    # With use_title_embedding: also add the title embedding to the output through the search
    # query projection itself (shared weights), weighted by a learned gate. Title and query then
    # start in one space, so training refines MiniLM's similarity instead of relearning it.
    title_skip: bool = True
    # Start every query projection (and so the tied title skip) as a similarity-preserving linear
    # map plus a zero-initialised MLP, so step 0 already ranks like the frozen features.
    query_residual: bool = True
    # Add the item's first image feature to its output through the closeup query projection itself
    # (shared weights, a learned gate; items without an image add nothing), as title_skip does for
    # the title and the search projection. A photo query and an item's photo then start in one
    # space, so a closeup query starts at the frozen image similarity instead of relearning it
    # through the transformer (docs/quality.md, "Fashion: attribute relevance").
    image_skip: bool = False
    # How the hash embedding starts (docs/quality.md, "A text path that starts at TF-IDF").
    # "random": the paper's N(0, 1/dim) table with equal per-token weights. "idf": each token's
    # weights start at its inverse document frequency over the training items (held-out items never
    # count), so a bag of tokens starts as a Gaussian random projection of its TF-IDF vector, which
    # preserves TF-IDF cosine (Johnson-Lindenstrauss).
    text_init: TextInit = "random"
    # Add the L2-normalised sum of an item's token bags (all text fields) to its output through a
    # linear map that starts orthogonal (like query_residual), and add the same path, with the same
    # weights, over the tokens of a search query's text. With the head's output layer starting at
    # zero, step 0 ranks by the title skip plus the (TF-)IDF projection: training starts where a
    # lexical baseline is instead of rediscovering it. Needs search queries' token ids everywhere a
    # search query is embedded (training, evaluation, the API, Serve).
    text_residual: bool = False
    # Drop each token of a bag with this probability in training (inverted dropout: kept tokens are
    # scaled by 1 / (1 - p)), so the table cannot key a training item on one rare token. Never at
    # evaluation or serving.
    token_dropout: float = 0.0
    # Popularity-debiased query scores for new items (cold start): in evaluation and serving, each
    # surface's query embedding q becomes q - popularity_debias * m, with m the running mean of that
    # surface's training query embeddings (kept in the model). An item's score then loses its mean
    # score over training queries times this weight, the popularity learned for items seen in
    # training, which a new item cannot have. 0 = plain scores.
    popularity_debias: float = 0.0
    # Hubness-corrected scores for new items (cold start without popularity; docs/quality.md,
    # "Cold start: hubness-corrected scores"): in evaluation and serving, an item's score for any
    # query is q . x - hubness_weight * h(x), where h(x) is the mean cosine of x to its
    # hubness_neighbors nearest catalog items (CSLS, Conneau et al. 2018), against a bank of catalog
    # item embeddings stored in the model after training (no engagement is read). Training pulls
    # the items it saw into dense neighbourhoods where they outscore new items for every nearby
    # query; h(x) takes that density out. The correction rides on one extra coordinate (items
    # -hubness_weight * h(x), queries 1), so served embeddings have embedding_dim + 1 values when
    # this is on and any inner-product index applies it exactly. 0 = plain scores.
    hubness_weight: float = 0.0
    hubness_neighbors: int = 1
    # At most this many catalog items (a seeded random sample beyond) in the stored bank:
    # embedding_dim * 4 bytes each in the model file.
    hubness_bank_size: int = 100_000
    # Blend the frozen encoder's similarity into served scores (cold start; docs/quality.md, "Session
    # 20: the frozen title similarity in served scores"): in evaluation and serving, score = q . x + title_blend *
    # cos(t_q, t_x), t the frozen MiniLM vectors (an item's title_emb; a search query's own MiniLM
    # feature; a user's mean history title; a photo's nearest catalog items' mean title). Training
    # bends the embedding towards the items it saw; the frozen part cannot be bent. It rides on
    # 384 more coordinates (sqrt(title_blend) * t), so any inner-product index applies it exactly.
    # Inference only: a trained model can switch. 0 = the trained score alone.
    title_blend: float = 0.0
    # Queries built from catalog items' own embeddings (itemsage.model.catalog_queries; evaluation,
    # Serve and the Python API; training and its validation keep the towers). Inference only: a
    # trained model can switch. docs/quality.md, "Queries from catalog items".
    # How a home-feed user becomes a query. "tower": the home tower on the frozen user feature (mean
    # frozen image and title features of the history). "items": the mean of the history items'
    # own item embeddings, PinnerSage-style (the paper's home queries are built from the embeddings
    # of the items a user engaged with); fashion val attr_home 0.069 vs the tower's 0.040 (3 seeds).
    # On a tiny catalog the tower can memorise each user's items and win (the 160-item test sample).
    home_query: HomeQuery = "items"
    # A photo query (closeup) adds the mean item embedding of its this many nearest catalog photos
    # (frozen image features, the query's own item left out) to the closeup tower's output: the
    # neighbours' embeddings carry the kind, colour and gender their text states, which a photo
    # alone shows poorly. 0 = the tower alone. Fashion val attr_closeup 0.327 vs the tower's 0.249.
    closeup_neighbors: int = Field(default=10, ge=0)

    def served_dim(self) -> int:
        """Width of the embeddings outside training (an index's dimension): ``embedding_dim``,
        + 384 with the frozen title part (``title_blend`` > 0), + 1 with the hubness coordinate."""
        title = TEXT_QUERY_DIM if self.title_blend > 0 else 0
        return int(self.embedding_dim) + title + (1 if self.hubness_weight > 0 else 0)


class LossConfig(Section):
    in_batch_negatives: bool = True
    random_negatives: bool = True
    num_random_negatives: int = 1024
    logq_correction: bool = True
    # Share of the num_random_negatives drawn from the product type (catalog column product_types,
    # else the last category_path level) of a positive of the batch (a row picked uniformly, then an
    # item of its type uniformly) instead of from the whole catalog: mixed negative sampling with
    # hard negatives from the catalog's own structure. Uniform negatives are nearly always of
    # another type, so the loss never has to tell colour or gender apart; these do. 0 = uniform.
    same_type_negatives: float = 0.0
    # With same_type_negatives: subtract log(q_j / q_uniform) from each random negative's logit,
    # q_j its probability under the mixed draw, so the random term stays a sampled softmax over
    # the catalog (the over-drawn types are not over-weighted, only seen more often). Off: the
    # hard negatives weigh as drawn (a harder objective than the full softmax).
    same_type_logq: bool = True
    # Learned temperature: init and lower clamp (the logit scale is 1/temperature, capped at 100).
    temperature_init: float = 0.07
    temperature_min: float = 0.01
    learn_temperature: bool = True
    # Count-min sketch used to estimate each item's in-batch sampling probability.
    cms_width: int = 4096
    cms_depth: int = 4


class TrainConfig(Section):
    features: str = "artifacts/features"
    storage_path: str = "artifacts/ray_results"
    name: str = "itemsage"
    num_workers: int = 2
    # Keep CPU free for Ray Data's tasks: 2 workers x 0.5 CPU leaves a whole core on a 2-core box.
    cpus_per_worker: float = 0.5
    # "auto": one GPU per worker when the cluster has (or its autoscaler can add) enough of them,
    # else CPU. "true" on a cluster that has no GPU and cannot get one trains on CPU with a
    # warning rather than waiting forever for a GPU.
    use_gpu: GpuChoice = "auto"
    # Ray placement group strategy for the workers (PACK | SPREAD | STRICT_PACK | STRICT_SPREAD).
    # PACK fills one node first (cheapest communication); STRICT_SPREAD puts every worker on its
    # own node (one GPU node per worker, or proving that DDP really crosses nodes).
    placement_strategy: PlacementStrategy = "PACK"
    batch_size: int = 256
    max_steps: int = 300
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3
    # Learning-rate decay after warm-up (train/schedule.py).
    lr_decay: LrDecay = "cosine"
    weight_decay: float = 0.01
    warmup_steps: int = 30
    grad_clip: float = 1.0
    # Learning-rate multiplier of the hash embedding (table and per-token weights). Below 1 it keeps
    # a similarity-preserving start (model.text_init = "idf") close to where it began, so the table
    # refines the lexical similarity instead of memorising training items; 0 freezes it.
    hash_lr_scale: float = 1.0
    checkpoint_every: int = 50
    eval_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 2
    seed: int = 0
    # Validation ranks each held-out pair's item among the val split's own items ("split": the
    # held-out catalog of an item-disjoint split) or among every item of the features ("all").
    val_catalog: ValCatalog = "split"
    # False: no in-training validation, for the final refit of a recipe chosen on val, on train + val
    # (preprocess with engagement.val_fraction 0: the test items stay the same, the val items join
    # training). Every checkpoint then scores 0 and the last one is registered, so set
    # checkpoint_every to the step count the val runs chose.
    validation: bool = True
    # Relative share of each "surface/action" task in every batch; missing tasks get weight 1.
    task_quotas: dict[str, float] = {}
    # Train on only these surfaces (empty = all); the single-task ablation uses this.
    surfaces: list[str] = []
    mlflow_experiment: str = "itemsage"
    register_model: bool = True
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()


AttributeType = Literal["keyword", "keyword_list", "number"]


class FilterableAttribute(Section):
    """One catalog attribute that search requests may filter on (``itemsage.index.attributes``)."""

    # catalog.parquet column it is read from; empty: the attribute's own name.
    field: str = ""
    # keyword: one value per item (equality, in-list); keyword_list: several values per item,
    # split on ``separator`` (matches when any value does); number: a float (ranges).
    type: AttributeType = "keyword"
    separator: str = ","


class FilterSearchConfig(Section):
    """How a filtered search runs inside the index (docs/serving.md, "Filters", has the measurements)."""

    # Filters that keep at most this many items are answered exactly: their vectors gathered from
    # a label-ordered copy (label_vectors) and scored in one matrix product, cost ~ matches x dim.
    # Above it the IVF search with the filter's ID selector is cheaper (crossover measured by
    # experiments/bench/filters.py, docs/serving.md "Filtered recall and QPS").
    exact_max_matches: int = 2000
    # Keep that copy (row = label, following adds and removes): as much memory again as an
    # IVF-Flat index's vectors (1 GiB at 1M x 256). Off: the exact path gathers through the index
    # (FAISS reconstruct_batch, ~0.3 us per vector), same answers, slower.
    label_vectors: bool = True
    # Above it, the ANN search runs with the filter's ID selector, widened by
    # (1 / selectivity) ** widen_exponent, at most max_widen times (x1.2 at 50%, x1.8 at 10%, x3.2
    # at 1%; 0.5 reached the same recall at 1M x 256 for twice the probing): efSearch for HNSW; for
    # IVF, the lists holding matches are probed nearest first until they hold as many matching
    # items as that many lists would if the matches were spread evenly, and at least
    # min_probe_per_k per requested result (a filter whose matches cluster needs more than its
    # global share suggests), ...
    widen_exponent: float = 0.25
    max_widen: float = 8.0
    min_probe_per_k: float = 10.0
    # ... times how many times rarer the matches are in the query's own nearest lists than in the
    # catalog (at most this): attributes that follow the embedding (gender, article type) leave
    # few matches near a query of another kind, so it must look further (itemsage.index.filtered).
    max_density_boost: float = 16.0
    # Filter views (itemsage.index.views): a filter keeping at most view_max_items items gets its
    # own copy of those items' vectors, kept per filter (normalised) and following every write,
    # so a request scans matching items only instead of testing the catalog against a selector.
    # Up to view_exact_max items a view is scored exactly (one matrix product); above, it is a
    # small IVF of view_lists_per_sqrt * sqrt(items) lists, probing the fewest lists whose
    # recall@10 against exact search over the view reaches view_recall_target for
    # view_calibration_queries catalog vectors plus noise (the index sweep's query model),
    # measured when the view is built, and never a smaller share of its lists than the index
    # probes. Views of single keyword values are built when the attributes attach
    # (view_prebuild), other filters' on their first request (a gather, plus a k-means of a few
    # ms per thousand items above view_exact_max). At most view_max_bytes of vectors in all (the
    # least recently used view is dropped). Measured: docs/serving.md "Filtered recall and QPS".
    views: bool = True
    view_max_items: int = 50_000
    # A view built on a request (not prebuilt) is built on the request path: at most this many
    # items, so a first request waits at most ~0.25 s (k-means + calibration of a 5,000-item view
    # on this VM; 1,000 items: 40 ms). Larger filters without a prebuilt view use the selector
    # paths below.
    view_lazy_max_items: int = 5_000
    view_exact_max: int = 512
    view_lists_per_sqrt: float = 2.0
    view_recall_target: float = 0.98
    # An IVF view of more than view_bf16_min_items items keeps bfloat16 codes: half the memory
    # and of the bytes scanned per probed item (measured on the fashion T-shirts view: 75 us
    # against 155 us float32 and 107 us 8-bit scalar quantizer at the same lists); its best
    # view_rerank * k candidates are re-scored exactly from the index's label-ordered vectors
    # (needs label_vectors), so what it returns is ranked and scored exactly. Smaller IVF views
    # stay float32 (their scan is short; the re-scoring would cost more than it saves).
    view_bf16_min_items: int = 4096
    view_rerank: int = 2
    view_calibration_queries: int = 200
    view_prebuild: bool = True
    view_max_bytes: int = 256 * 1024 * 1024


class LexicalConfig(Section):
    """The lexical (BM25, tantivy) index built beside the dense one (itemsage.index.lexical)."""

    # Off: the index holds embeddings only; /search answers mode "dense" alone.
    enabled: bool = True
    # Catalog text fields joined into each item's document; empty: the model's text fields (the
    # fields the BM25 baseline of the evaluation reads, itemsage.eval.baselines).
    fields: list[str] = []


class IndexConfig(Section):
    # FAISS index-factory spec, or "auto" to pick by a recall/QPS sweep.
    spec: str = "auto"
    candidates: list[str] = ["Flat", "HNSW32", "IVF{nlist},Flat"]
    recall_target: float = 0.95
    k: int = 10
    use_gpu: GpuChoice = "auto"
    # Catalog attributes requests may filter on; their bitmaps are built and saved with the index.
    # An attribute whose column a catalog lacks (price outside the amazon layout) is left out.
    filterable: dict[str, FilterableAttribute] = {
        "gender": FilterableAttribute(field="size_type"),
        "product_type": FilterableAttribute(field="product_types"),
        "color": FilterableAttribute(field="colors", type="keyword_list"),
        "price": FilterableAttribute(type="number"),
    }
    filters: FilterSearchConfig = FilterSearchConfig()
    lexical: LexicalConfig = LexicalConfig()


SearchMode = Literal["dense", "lexical", "hybrid"]
SEARCH_MODES: tuple[str, ...] = typing.get_args(SearchMode)


class HybridConfig(Section):
    """Search modes: dense (the search tower + FAISS), lexical (BM25 over the item text), hybrid
    (both, fused by reciprocal rank). docs/serving.md ("Hybrid retrieval") has the measurements."""

    # What /search and ItemSage.search use when a request names no mode. Chosen by measurement
    # (docs/quality.md, "Hybrid retrieval"): Shopee search, unseen test listings against all
    # 27,344, Recall@10 hybrid 0.774 / 0.771 vs dense 0.742 / 0.736 vs lexical 0.766 (two trainings);
    # fashion likewise. A stronger dense model can reverse it (the current shopee.yaml: dense 0.810,
    # hybrid 0.801), so a config sets it per catalog.
    default_mode: SearchMode = "hybrid"
    # What /similar by item id and LocalCatalog.similar use when a request names no mode (the
    # lexical query is the item's own text; a photo query is always dense). Dense by default:
    # hybrid is not ahead on fashion's test split, nor on Amazon once model.title_blend is on
    # (docs/quality.md, "Similar items in hybrid mode", "Session 20").
    similar_default_mode: SearchMode = "dense"
    # Reciprocal-rank fusion: score(item) = sum over modes of weight / (rrf_k + rank), rank 1-based
    # (Cormack et al. 2009 use 60: it damps the top ranks' dominance without flattening them).
    # experiments/hybrid_sweep.py on Shopee val: equal weights best; rrf_k 10 only +0.005 (noise).
    rrf_k: float = 60.0
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    # Each mode's ranking is read to this depth (at least k) before fusing.
    depth: int = 100
    # A filter keeping at most this many items restricts the lexical search with a term set of
    # their labels inside the query; a larger one is applied to the BM25 ranking as it is read,
    # reading further until k matching hits are found (exact either way, never a post-filtered
    # fixed top-k).
    term_set_max: int = 4096


class LiveConfig(Section):
    """Live catalog: item writes while serving (itemsage.index.changelog / itemsage.index.live)."""

    # Off: the served index is read-only, exactly as built (writes answer 503).
    enabled: bool = False
    # Where snapshots (index versions holding the live items) and the default SQLite change log
    # live. "": "live/" beside a local index directory (index versions built side by side share
    # it, so a model swap keeps the live items); a models:/ index has no directory: set it.
    dir: str = ""
    # The durable change log: "" = SQLite at <dir>/changes.sqlite (one machine), "sqlite:///path",
    # "postgresql://user:password@host:port/db" for a cluster (every replica, every node), or
    # "env:NAME" to read that URI from the environment variable NAME (keeps the password out).
    changelog_uri: str = ""
    # How often an idle replica looks for new changes. The read is one indexed query; 50 ms keeps
    # time-to-visible far under the 1 s target without loading the log server.
    poll_interval_s: float = 0.05
    # Changes read and applied per step: bounds the time one apply holds the index lock.
    apply_batch: int = 512
    # A replica folds the log into a new snapshot (an index version) after this many changes
    # since the last one, so a restart replays at most about this many.
    snapshot_every: int = 5_000
    # Snapshots kept per base index version (the newest ones); older ones are deleted.
    keep_snapshots: int = 2


class ServeConfig(Section):
    # Loopback by default: the demo must not expose an unauthenticated API to the network.
    host: str = "127.0.0.1"
    port: int = 8000
    max_query_chars: int = 512
    # Decoded bytes of one uploaded image; larger uploads get 413 before any decoding.
    max_upload_bytes: int = 10_000_000
    # Decoded pixels of one image (checked from the header, before decoding): a small file can
    # still be a decompression bomb.
    max_image_pixels: int = 40_000_000
    # Whole request body, checked before JSON parsing (base64 inflates an upload by 4/3).
    max_request_bytes: int = 16_000_000
    max_k: int = 1000
    # Home-feed queries: items of history considered (the paper's PinnerSage uses recent activity).
    max_history: int = 200
    max_item_id_chars: int = 256
    # POST /embed/item: text fields longer than this are refused (the tokenizer would cut them anyway).
    max_text_field_chars: int = 10_000
    max_item_images: int = 20
    # POST /embed/item may name local image files only under these directories (none by default),
    # so the API cannot be used to read arbitrary files of the server.
    allowed_image_roots: list[str] = []
    # Idempotent reads are retried this many times when a replica dies mid-request.
    read_retries: int = 1
    # Where the image backbone's weights file (e.g. image.backbone: resnet50) is on the serving
    # machine, when not at the path recorded at preprocessing; checked against the recorded
    # SHA-256. Empty: the recorded path, or $ITEMSAGE_IMAGE_WEIGHTS (itemsage.trained.image_weights).
    image_weights_path: str | None = None
    # Bearer token the write endpoints (PUT/DELETE /items/{id}, POST /items/bulk) require. Empty:
    # read from the environment variable named by write_token_env (keeps it out of config files);
    # both empty: writes are refused (403). Never logged (itemsage.serve.auth).
    write_token: SecretStr = SecretStr("")
    write_token_env: str = "ITEMSAGE_WRITE_TOKEN"
    # Reads are open by default; true: they need the same token.
    reads_require_token: bool = False
    # POST /items/bulk: upserts plus deletes in one request.
    max_bulk_items: int = 1000
    live: LiveConfig = LiveConfig()
    # Attributes one request's ``filters`` may name (each a clause; they are ANDed).
    max_filter_clauses: int = 16
    hybrid: HybridConfig = HybridConfig()


class PipelineConfig(Section):
    preprocess: PreprocessConfig = PreprocessConfig()
    train: TrainConfig = TrainConfig()
    index: IndexConfig = IndexConfig()
    serve: ServeConfig = ServeConfig()


T = TypeVar("T", bound=BaseModel)


def _section_at(cls: Any, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model found by walking ``loc`` down from ``cls`` (None past a leaf)."""
    for part in loc:
        fields = getattr(cls, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            return None
        cls = fields[part].annotation
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _dotted(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix.rstrip(".")
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true/false",
    "bool_parsing": "true/false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _message(cls: type[BaseModel], prefix: str, err: Any) -> str:
    """One pydantic error as a line that names the dotted key (and, for a typo, the valid keys)."""
    loc = tuple(err["loc"])
    key = _dotted(prefix, loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _section_at(cls, loc[:-1])
        known = sorted(parent.model_fields) if parent else []
        where = _dotted(prefix, loc[:-1]) or "the top level"
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        maybe = f"; did you mean {_dotted(prefix, (*loc[:-1], hint[0]))}?" if hint else ""
        return f"unknown config key {key} (known keys under {where}: {', '.join(known)}){maybe}"
    got = err.get("input")
    if kind in _EXPECTED:
        return f"{key}: expected {_EXPECTED[kind]}, got {got!r}"
    if kind == "literal_error":
        return f"{key}: must be one of {err['ctx']['expected']}, got {got!r}"
    return f"{key}: {err['msg']}, got {got!r}"


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build the section ``cls`` from plain data, every key and type checked.

    ``prefix`` is the section's dotted place in the pipeline config (``"serve."``), so errors name
    the key as it is written in a YAML file.
    """
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(_message(cls, prefix, err) for err in e.errors())) from None


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""
    return cfg.model_dump(mode="json")


def flatten(cfg: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted ``{"train.lr": 0.001, ...}`` view, for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in (to_dict(cfg) if isinstance(cfg, BaseModel) else cfg).items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"override {dotted!r}: empty key in the dotted path")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "train.surfaces=[search]"]`` -> nested dict; values parsed as YAML."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            why = getattr(e, "problem", None) or e
            raise ConfigError(f"override {key.strip()}: value {raw!r} is not valid YAML ({why})") from None
        _set_dotted(data, key.strip(), value)
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` (a config as plain data) with dotted overrides merged in, as :func:`load_config` does."""
    return _merge(data, parse_overrides(overrides))


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from an optional YAML file plus dotted overrides, checking every key."""
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
        data = loaded
    return from_dict(cls, apply_overrides(data, overrides or []))


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
