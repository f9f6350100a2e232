"""Ray Serve deployments: Ingress -> Retriever -> QueryEncoder / ItemEncoder.

The Retriever is the hub on purpose. It owns the published version (model + index + catalog) and,
per request, pins it once and passes the pinned model version to the encoder it calls; so a query
is always embedded by the model whose item embeddings are in the index it searches, also during a
version swap, and the answer names both versions. (Ingress -> QueryEncoder -> Retriever would let
the encoder and the index swap at different moments.)

Deployment options (replicas, resources, batching, user_config) have defaults here and are meant to
be set in ``deployments/serve_config.yaml``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ray import serve
from ray.serve.handle import DeploymentHandle

from itemsage.config import ServeConfig, from_dict
from itemsage.serve.api import Backend, ServiceUnavailableError, create_api
from itemsage.serve.bundle import ModelBundle, features_dir
from itemsage.serve.core import ModelSpec, ServingSpec
from itemsage.serve.endpoints import BACKEND_METHODS, WRITE_METHODS
from itemsage.serve.errors import ServeError, as_serve_error
from itemsage.serve.write_api import SERVED_KEY, served_headers
from itemsage.trained import resolve_model_ref

# Every replica imports this module; torch and the model code are imported only by the replicas
# that run models (the encoders), so the Ingress and the Retriever stay small, fast-starting
# processes.
if TYPE_CHECKING:
    import numpy as np
    import torch

    from itemsage.serve.encoders import PreparedItem

log = logging.getLogger("ray.serve")

# Encoder user_config knobs besides the (optional) model to preload.
BATCH_KEYS = ("max_batch_size", "batch_wait_timeout_s", "torch_threads")
DEFAULT_MAX_BATCH = 32
# Small: at concurrency 1 every request waits this long for company that never comes; under load
# the batch fills while the previous one runs anyway.
DEFAULT_BATCH_WAIT_S = 0.002
# Catalog writes wait this long for others to share an item-tower forward (user_config
# ``write_batch_wait_s``). A write's latency matters far less than a query's (time-to-visible
# counts from the acknowledgement), and a text item alone costs ~15 ms of CPU (MiniLM title +
# tower), four in one forward ~22 ms: at 20 writes/s, batches of ~5 cut what writes take from
# searches on a 2-CPU box (experiments/bench/live.py).
DEFAULT_WRITE_BATCH_WAIT_S = 0.25


def client_errors_as_values(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Return a :class:`ServeError` instead of raising it.

    A client's mistake (unknown id, bad image) is an answer, not a replica failure: raised, Serve
    would log a full traceback at ERROR level for every bad request. The caller re-raises it
    (:func:`_raise_if_error`).
    """

    @functools.wraps(method)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only client errors are turned into values
            err = as_serve_error(exc)
            if err is None:
                raise
            return err

    return wrapper


T = TypeVar("T")


async def _first(batch: Awaitable[list[T]]) -> T:
    """The one answer of a batch of one."""
    return (await batch)[0]


def _raise_if_error(result: Any) -> Any:
    if isinstance(result, ServeError):
        raise result
    return result


async def _read_with_retries(call: Callable[[], Awaitable[Any]], what: str, retries: int) -> Any:
    """``await call()``, a read through a deployment handle, tried again up to ``retries`` times
    when it fails for any reason but the client's input (a replica died mid-request).

    Every call between deployments is a read, so repeating one is safe, and Serve's router no
    longer picks a replica it saw die: the retry goes to another replica. Client errors
    (:class:`ServeError`) are raised at once; the last failure is raised when retries run out.
    """
    for attempt in range(retries + 1):
        try:
            return _raise_if_error(await call())
        except Exception as exc:  # noqa: BLE001 - classified below
            if as_serve_error(exc) is not None or attempt >= retries:
                raise
            log.warning("%s failed (%s); retrying once", what, type(exc).__name__)
    raise AssertionError("unreachable")


def direct(handle: DeploymentHandle) -> DeploymentHandle:
    """``handle`` sending its calls straight to the chosen replica's gRPC server.

    Every replica runs an inter-deployment gRPC server; by default Serve still sends handle calls
    as Ray actor tasks and returns results through the object store. Our calls only ever await
    their (small) results, never pass them on by reference, so the direct path is enough and
    shorter.
    """
    return handle.options(_by_reference=False)


def serve_config(data: Mapping[str, Any] | None) -> ServeConfig:
    """A :class:`ServeConfig` from a plain dict (deployment args must be plain data), keys checked."""
    return from_dict(ServeConfig, dict(data or {}), "serve.")


def _device() -> str:
    import ray
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def _model_spec(spec: ServingSpec, base_dir: str | None) -> ModelSpec:
    """Pin a spec's model reference and features directory (blocking: may ask MLflow)."""
    from itemsage.trained import load_manifest

    spec = spec.resolved(base_dir)
    spec.apply_environment()
    ref = resolve_model_ref(spec.model_uri, spec.model_version)
    manifest = load_manifest(ref.uri)
    return ModelSpec(ref, features_dir(manifest, spec.features, base_dir))


class BatchGate:
    """Holds new requests while a batch is running, then lets them all in at once.

    ``@serve.batch`` (Ray 2.60) forms the next batch as soon as its wait timeout expires, even
    while the previous batch is still running; with a short timeout, busy replicas thus queue many
    batches of one or two requests, and batching buys nothing. Waiting at this gate until the
    running forward finishes makes everything that arrived meanwhile enter the batch queue in the
    same instant, so it becomes one batch.

    A request that finds nothing else in flight has no one to share a forward with: :meth:`enter`
    runs it at once instead of sending it through the batch queue, which would cost it the batch
    timeout plus a hand-off to ``@serve.batch``'s queue task for nothing.
    """

    def __init__(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0

    async def wait(self) -> None:
        await self._idle.wait()

    async def enter(self, alone: Callable[[], Awaitable[T]], batched: Callable[[], Awaitable[T]]) -> T:
        """``alone()`` (gate closed) when this is the only request here, else ``batched()`` after the gate."""
        lone = self._in_flight == 0
        self._in_flight += 1
        try:
            if lone:
                return await self.run_async(alone())
            await self._idle.wait()
            return await batched()
        finally:
            self._in_flight -= 1

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread with the gate closed."""
        return await self.run_async(asyncio.to_thread(fn, *args))

    async def run_async(self, work: Awaitable[Any]) -> Any:
        """Await ``work`` (e.g. a call to another deployment) with the gate closed."""
        self._idle.clear()
        try:
            return await work
        finally:
            self._idle.set()


class _EncoderBase:
    """Shared by both encoders: the version cache, batching knobs, optional preloading."""

    # Names of the @serve.batch methods whose batch size and wait the user_config sets.
    BATCHED: tuple[str, ...] = ()
    # Whether this encoder runs MiniLM (queries do; the item tower takes token ids instead).
    USES_TEXT_ENCODER = True

    def __init__(self, serve_cfg: Mapping[str, Any] | None = None, base_dir: str | None = None) -> None:
        from itemsage.serve.encoders import LocalEncoders

        self.cfg = serve_config(serve_cfg)
        self.base_dir = base_dir
        self.enc = LocalEncoders(self.cfg, _device(), base_dir=base_dir)

    async def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        cfg = dict(user_config or {})
        knobs = {k: cfg.pop(k) for k in BATCH_KEYS if k in cfg}
        threads = int(knobs.get("torch_threads", 0))
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self._set_batching(
            int(knobs.get("max_batch_size", DEFAULT_MAX_BATCH)),
            float(knobs.get("batch_wait_timeout_s", DEFAULT_BATCH_WAIT_S)),
        )
        if cfg.get("model_uri"):
            cfg.setdefault("index_uri", "-")  # encoders never read the index
            spec = ServingSpec.from_user_config(cfg)
            await self.warm(await asyncio.to_thread(_model_spec, spec, self.base_dir))

    def _set_batching(self, max_batch_size: int, wait_s: float) -> None:
        for name in self.BATCHED:
            getattr(self, name).set_max_batch_size(max_batch_size)
            getattr(self, name).set_batch_wait_timeout_s(wait_s)

    async def _bundle(self, spec: ModelSpec) -> ModelBundle:
        cached = self.enc.cached(spec)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.enc.bundle, spec)

    async def warm(self, spec: ModelSpec) -> None:
        await asyncio.to_thread(self.enc.warm, spec, self.USES_TEXT_ENCODER)

    def check_health(self) -> None:
        # Nothing to verify beyond the process being alive: versions load on demand.
        return None


@serve.deployment(name="QueryEncoder", max_ongoing_requests=64)
class QueryEncoder(_EncoderBase):
    """Query embeddings for the three surfaces; text and image forwards are batched across requests."""

    BATCHED = ("_text_batch", "_image_batch")

    def __init__(self, serve_cfg: Mapping[str, Any] | None = None, base_dir: str | None = None) -> None:
        super().__init__(serve_cfg, base_dir)
        self._text_gate = BatchGate()
        self._image_gate = BatchGate()

    @client_errors_as_values
    async def text(self, spec: ModelSpec, query: str) -> np.ndarray:
        bundle = await self._bundle(spec)
        return await self._text_gate.enter(
            lambda: _first(asyncio.to_thread(self.enc.text_batch, [bundle], [query])),
            lambda: self._text_batch(bundle, query),
        )

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _text_batch(self, bundles: list[ModelBundle], queries: list[str]) -> list[np.ndarray]:
        # One MiniLM forward for the whole batch, off the event loop so requests keep queueing.
        return await self._text_gate.run(self.enc.text_batch, bundles, queries)

    @client_errors_as_values
    async def texts(self, spec: ModelSpec, queries: list[str]) -> list[np.ndarray]:
        """Already a batch (the Retriever's): one forward, taking its turn at the same gate."""
        bundle = await self._bundle(spec)
        await self._text_gate.wait()
        return await self._text_gate.run(self.enc.text_batch, [bundle] * len(queries), queries)

    @client_errors_as_values
    async def image(self, spec: ModelSpec, data: bytes) -> np.ndarray:
        bundle = await self._bundle(spec)
        # Decoding runs per request: a bad upload fails alone, never the batch it would join.
        pixels = await asyncio.to_thread(self.enc.image_pixels, bundle, data)
        return await self._image_gate.enter(
            lambda: _first(asyncio.to_thread(self.enc.image_batch, [bundle], [pixels])),
            lambda: self._image_batch(bundle, pixels),
        )

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _image_batch(self, bundles: list[ModelBundle], pixels: list[torch.Tensor]) -> list[np.ndarray]:
        return await self._image_gate.run(self.enc.image_batch, bundles, pixels)

    @client_errors_as_values
    async def similar_query(self, spec: ModelSpec, item_id: str) -> tuple[str, np.ndarray]:
        # Stored features + a small projection: no backbone, nothing worth batching.
        bundle = await self._bundle(spec)
        return await asyncio.to_thread(self.enc.similar_query, bundle, item_id)

    @client_errors_as_values
    async def history(self, spec: ModelSpec, item_ids: list[str]) -> np.ndarray:
        bundle = await self._bundle(spec)
        return await asyncio.to_thread(self.enc.history, bundle, item_ids)


@serve.deployment(name="ItemEncoder", max_ongoing_requests=32)
class ItemEncoder(_EncoderBase):
    """Item-tower embeddings of new or changed items; image backbone and tower batched."""

    BATCHED = ("_item_batch", "_write_batch")
    USES_TEXT_ENCODER = False

    def __init__(self, serve_cfg: Mapping[str, Any] | None = None, base_dir: str | None = None) -> None:
        super().__init__(serve_cfg, base_dir)
        self._item_gate = BatchGate()
        self._write_batch.set_batch_wait_timeout_s(DEFAULT_WRITE_BATCH_WAIT_S)

    async def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        cfg = dict(user_config or {})
        write_wait = float(cfg.pop("write_batch_wait_s", DEFAULT_WRITE_BATCH_WAIT_S))
        await super().reconfigure(cfg)
        self._write_batch.set_batch_wait_timeout_s(write_wait)

    @client_errors_as_values
    async def write_item(self, spec: ModelSpec, payload: dict[str, Any]) -> np.ndarray:
        """An item being written to the live catalog: always through the write batch, which waits
        up to ``write_batch_wait_s`` for other writes (no lone fast path: writes trade latency for
        CPU)."""
        bundle = await self._bundle(spec)
        prepared = await asyncio.to_thread(self.enc.prepare_item, bundle, payload)
        await self._item_gate.wait()
        return await self._write_batch(bundle, prepared)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_WRITE_BATCH_WAIT_S)
    async def _write_batch(self, bundles: list[ModelBundle], items: list[PreparedItem]) -> list[np.ndarray]:
        return await self._item_gate.run(self.enc.item_batch, bundles, items)

    @client_errors_as_values
    async def item(self, spec: ModelSpec, payload: dict[str, Any]) -> np.ndarray:
        bundle = await self._bundle(spec)
        prepared = await asyncio.to_thread(self.enc.prepare_item, bundle, payload)
        return await self._item_gate.enter(
            lambda: _first(asyncio.to_thread(self.enc.item_batch, [bundle], [prepared])),
            lambda: self._item_batch(bundle, prepared),
        )

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _item_batch(self, bundles: list[ModelBundle], items: list[PreparedItem]) -> list[np.ndarray]:
        return await self._item_gate.run(self.enc.item_batch, bundles, items)


class HandleEncoding:
    """The :class:`~itemsage.serve.service.Encoding` protocol over the encoder deployments.

    An encoding that fails because an encoder replica died is retried once, on another replica,
    right here: otherwise the failure would fail the Retriever's whole batch and use up the
    ingress's one retry, which may land on the other Retriever replica before its router has
    seen the encoder die.
    """

    def __init__(self, queries: DeploymentHandle, items: DeploymentHandle, retries: int = 1) -> None:
        self.queries = queries
        self.items = items
        self.retries = retries

    async def _query(self, method: str, *args: Any) -> Any:
        call = getattr(self.queries, method)
        return await _read_with_retries(lambda: call.remote(*args), f"QueryEncoder.{method}", self.retries)

    async def text(self, spec: ModelSpec, query: str) -> np.ndarray:
        return await self._query("text", spec, query)

    async def texts(self, spec: ModelSpec, queries: list[str]) -> list[np.ndarray]:
        return await self._query("texts", spec, queries)

    async def image(self, spec: ModelSpec, data: bytes) -> np.ndarray:
        return await self._query("image", spec, data)

    async def similar_query(self, spec: ModelSpec, item_id: str) -> tuple[str, np.ndarray]:
        return await self._query("similar_query", spec, item_id)

    async def history(self, spec: ModelSpec, item_ids: list[str]) -> np.ndarray:
        return await self._query("history", spec, item_ids)

    async def item(self, spec: ModelSpec, payload: dict[str, Any]) -> np.ndarray:
        call = self.items.item
        return await _read_with_retries(lambda: call.remote(spec, payload), "ItemEncoder.item", self.retries)

    async def write_item(self, spec: ModelSpec, payload: dict[str, Any]) -> np.ndarray:
        # Embedding is a pure function of the payload: retrying it on another replica is safe.
        call = self.items.write_item
        return await _read_with_retries(lambda: call.remote(spec, payload), "ItemEncoder.write_item", self.retries)

    async def warm(self, spec: ModelSpec) -> None:
        # Reaches one replica of each encoder; the others load the version on their first request
        # (or at start, from their own user_config).
        await asyncio.gather(self.queries.warm.remote(spec), self.items.warm.remote(spec))


def forwarding(
    target: Callable[[Any, str], Callable[..., Awaitable[Any]]], wrap: Callable[..., Any] | None = None
) -> Callable[[type], type]:
    """Class decorator: a method for each backend method in ``ENDPOINTS`` that the class does not
    define itself, calling ``target(self, name)(*args, **kwargs)`` (wrapped by ``wrap``).

    Real, named methods rather than ``__getattr__``: Serve looks a handle call's method up on the
    replica's class, and its logs and metrics name it.
    """

    def forwarder(name: str) -> Callable[..., Awaitable[Any]]:
        async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return await target(self, name)(*args, **kwargs)

        method.__name__ = method.__qualname__ = name
        return wrap(method) if wrap is not None else method

    def decorate(cls: type) -> type:
        for name in BACKEND_METHODS:
            if name not in cls.__dict__:
                setattr(cls, name, forwarder(name))
        return cls

    return decorate


@serve.deployment(name="Retriever", max_ongoing_requests=128)
@forwarding(lambda self, name: self._forward(name), wrap=client_errors_as_values)
class RetrieverDeployment:
    """FAISS retrieval over the published version; swaps versions in place via ``user_config``.

    Every backend method of ``ENDPOINTS`` but ``search`` (batched here) is forwarded to the
    :class:`~itemsage.serve.service.Retriever` core as is (:func:`forwarding`).
    """

    def __init__(
        self,
        query_encoder: DeploymentHandle,
        item_encoder: DeploymentHandle,
        serve_cfg: Mapping[str, Any] | None = None,
        base_dir: str | None = None,
    ) -> None:
        import ray

        from itemsage.serve.service import Retriever

        use_gpu: str | bool = "auto" if ray.get_gpu_ids() else False
        cfg = serve_config(serve_cfg)
        self.core = Retriever(
            cfg,
            HandleEncoding(direct(query_encoder), direct(item_encoder), cfg.read_retries),
            use_gpu=use_gpu,
            base_dir=base_dir,
        )
        self._search_gate = BatchGate()
        self.replica = serve.get_replica_context().replica_id.unique_id

    def _served(self) -> dict[str, Any]:
        """Who answers, and the change-log position its index holds: read *before* a request runs,
        so a write at or below it is certainly in the answer (``itemsage.serve.write_api``)."""
        state = self.core.state if self.core.loaded else None
        return {"replica": self.replica, "applied_seq": int(getattr(state.index, "applied_seq", 0)) if state else 0}

    def _forward(self, name: str) -> Callable[..., Awaitable[Any]]:
        """The core's method ``name``; a read's answer also names this replica and its applied seq."""
        method = getattr(self.core, name)
        if name in WRITE_METHODS:
            return method

        async def read(*args: Any, **kwargs: Any) -> Any:
            served = self._served()
            try:
                answer = await method(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a client error (404) says who answered too
                err = as_serve_error(exc)
                if err is not None:
                    err.headers = served_headers(served)
                raise
            return {**answer, SERVED_KEY: served} if isinstance(answer, dict) else answer

        return read

    async def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Load the configured version fully, then swap it in; in-flight requests are unaffected."""
        spec = ServingSpec.from_user_config(user_config)
        state = await self.core.swap(spec)
        log.info("serving model %s with index %s", state.model_version, state.index_version)

    def check_health(self) -> None:
        # Raises (unhealthy -> Serve restarts the replica) when no index is loaded or it is empty.
        self.core.state.health()

    @client_errors_as_values
    async def search(
        self, query: str, k: int, filters: Mapping[str, Any] | None = None, mode: str | None = None
    ) -> dict[str, Any]:
        served = self._served()
        if filters:  # a filtered search has its own selector: not batched with others
            return {**await self.core.search(query, k, filters, mode), SERVED_KEY: served}
        mode = self.core.search_mode(mode)  # a mode this index cannot answer fails this request only
        # Concurrent searches are batched here, at the hub: a batch makes one QueryEncoder call
        # and one FAISS call, so the per-request cost of the encoder hop shrinks with load.
        answer = await self._search_gate.enter(
            lambda: _first(self.core.search_many([query], [k], [mode])),
            lambda: self._search_batch(query, k, mode),
        )
        return {**answer, SERVED_KEY: served}

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def _search_batch(self, queries: list[str], ks: list[int], modes: list[str | None]) -> list[dict[str, Any]]:
        return await self._search_gate.run_async(self.core.search_many(queries, ks, modes))


@forwarding(lambda self, name: functools.partial(self._call, name))
class HandleBackend:
    """The API's backend over the Retriever handle, retrying reads once when a replica fails.

    Each backend method of ``ENDPOINTS`` becomes a call of the Retriever deployment's method of
    the same name (:func:`forwarding`). Every endpoint is a read (nothing is written anywhere), so
    repeating a call is safe. Client errors (4xx) are never retried; a failure that persists
    becomes a 503, never a 500.
    """

    def __init__(self, retriever: DeploymentHandle, retries: int = 1) -> None:
        self.retriever = retriever
        self.retries = retries

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        call = getattr(self.retriever, method)
        # A write is not retried here: if the replica died after logging it, a retried DELETE would
        # answer 404. The client repeats it (PUT is idempotent) after the 503.
        retries = 0 if method in WRITE_METHODS else self.retries
        try:
            return await _read_with_retries(lambda: call.remote(*args, **kwargs), method, retries)
        except Exception as exc:  # noqa: BLE001 - classified below
            err = as_serve_error(exc)
            if err is not None:
                raise err from None
            log.error("%s failed after %d attempts: %r", method, retries + 1, exc)
            if method in WRITE_METHODS:
                raise ServiceUnavailableError(
                    f"{method} failed: the backend is unavailable; the write may or may not be in the change "
                    "log, repeat it"
                ) from None
            raise ServiceUnavailableError(f"{method} failed: the backend is unavailable, try again") from None


@serve.deployment(name="Ingress", max_ongoing_requests=128)
@serve.ingress()
class Ingress:
    """The FastAPI app (:func:`~itemsage.serve.api.create_api`) over the Retriever handle."""

    def __init__(
        self, retriever: DeploymentHandle, serve_cfg: Mapping[str, Any] | None = None, web_dir: str | None = None
    ) -> None:
        self.cfg = serve_config(serve_cfg)
        # HandleBackend's methods are made from ENDPOINTS (forwarding), which a type checker cannot see.
        self.backend = cast(Backend, HandleBackend(direct(retriever), self.cfg.read_retries))
        self.web_dir = web_dir

    def __serve_build_asgi_app__(self) -> Any:
        return create_api(self.backend, self.cfg, self.web_dir)


def build_graph(
    serve_cfg: Mapping[str, Any] | None = None,
    web_dir: str | None = None,
    base_dir: str | None = None,
    user_config: Mapping[str, Any] | None = None,
) -> Any:
    """The bound application ``Ingress(Retriever(QueryEncoder, ItemEncoder))``.

    ``user_config`` (the version to serve) goes to the Retriever and, for preloading, to both
    encoders; a serve config file's per-deployment ``user_config`` replaces it.
    """
    cfg = dict(serve_cfg or {})
    serve_config(cfg)  # fail here, in the driver, on a bad key, not in every replica
    opts: dict[str, Any] = {}
    if user_config:
        ServingSpec.from_user_config(user_config)  # same: fail early
        opts = {"user_config": dict(user_config)}
    # @serve.deployment turns each class into a Deployment; mypy keeps the class type (it does not
    # apply what a class decorator returns: python/mypy#3135), hence the ignores.
    queries = QueryEncoder.options(**opts).bind(cfg, base_dir)  # type: ignore[attr-defined]
    items = ItemEncoder.options(**opts).bind(cfg, base_dir)  # type: ignore[attr-defined]
    retriever = RetrieverDeployment.options(**opts).bind(queries, items, cfg, base_dir)  # type: ignore[attr-defined]
    return Ingress.bind(retriever, cfg, web_dir)  # type: ignore[attr-defined]


__all__ = [
    "HandleBackend",
    "HandleEncoding",
    "Ingress",
    "ItemEncoder",
    "QueryEncoder",
    "RetrieverDeployment",
    "build_graph",
]
