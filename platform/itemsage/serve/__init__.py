"""Serving: the HTTP API, the retrieval core, and the Ray Serve deployments (docs/serving.md).

Modules, lightest first: ``errors``, ``schemas``, ``endpoints`` (the one table of HTTP endpoints),
``uploads`` and ``api`` (no torch: what the Ingress runs); ``core`` and ``service`` (version state, search, request flows); ``bundle`` and
``encoders`` (model versions, frozen backbones, towers); ``local`` (everything in one process: the
benchmark baseline); ``deployments`` (the Serve graph); ``fast_ingress`` (the environment that
starts Ray with Serve's HAProxy ingress).
"""
