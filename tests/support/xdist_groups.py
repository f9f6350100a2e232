"""How `make test` shares the suites between its two pytest-xdist workers (see tests/conftest.py)."""

from __future__ import annotations

# `make test` runs the suites on two pytest-xdist workers (`-n 2 --dist loadgroup`). A group is a
# unit of work that runs whole on one worker, its tests one after another:
#
# - every module that starts Ray or Serve, in the pytest process or in subprocesses, so that its
#   module fixtures (a local Ray, a Serve app, a cluster) start once; a worker runs one test at a
#   time and each module shuts its Ray down, so a worker has at most one in-process Ray at a time
#   (the other worker may have its own: each `ray.init` starts a local Ray of its own, and the
#   subprocess clusters take fresh ports and private state, tests/support/ray_nodes.py);
# - modules that share an expensive session fixture (the trained demo model `trained_serving`, the
#   `sample_model`, `tiny_serving`), so that it is built once. The one exception is the fault test:
#   alone it takes longer than the other serving suites together, so it is a group of its own, and
#   the two workers share the one `trained_serving` build through the run's temporary directory.
#
# The groups are handed out heaviest first (longest-processing-time first): each worker takes the
# next group when it is nearly done with its last one, then the ungrouped tests fill the gaps, so
# neither worker starts a long group while the other is finishing. The seconds are per group, as
# measured in a full run on a loaded 2-core box (2026-12-05: 1518 s, `--durations`), "->" in the
# next one (1386 s) after the changes the Makefile lists. Only their order matters.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The longest single test: PostgreSQL, MLflow and a 2-node `ray start` cluster in subprocesses,
    # five `ray job submit` jobs, `serve deploy`. Services start side by side and the missing-config
    # job runs beside preprocessing (tests/support/e2e.py); the teardown skips Serve's drain and
    # stops the services side by side (alone: 319 s -> 271 s), the Ray cluster in `ray stop`'s
    # order (teardown 30 s -> 19 s); the cluster config's 2 hash partitions (alone: 246 s -> 217 s).
    ("multinode", ("tests/cluster/test_multinode.py",)),  # 575 s -> 415 s (1386 s run)
    (
        # The trained demo model's build (82 s in the 1518 s run; shared with "live_faults" through
        # a file lock, tests/serve/trained.py), then the live-catalog, end-to-end (the soak now on
        # its app: one Serve start less, set-up 87 s), and `serve run` suites (its two apps start
        # side by side: alone 69 s -> 62 s).
        "trained_serving",  # ~500 s
        (
            "tests/serve/test_live_serve.py",
            "tests/serve/test_serve_e2e.py",
            "tests/serve/test_serve_run_cli.py",
        ),
    ),
    # Four `experiments/train.py` subprocesses, each with its own Ray; the clean reference run now
    # trains beside the killed-worker run (alone: 210 s -> 182 s), and so does the killed driver's
    # first attempt (alone: 198 s -> 178 s).
    ("fault_tolerance", ("tests/train/test_fault_tolerance.py",)),  # 368 s -> 307 s
    # The Ray Data suites, each with its own local Ray (tests/data/conftest.py): 150 + 94 + 50 s in
    # the 1518 s run; 471 s in the 1371 s run (d4a6393), 160 s once the tests' Rays keep their idle
    # workers (tests/conftest.py; 1238 s run, 2026-12-05).
    (
        "ray_data",  # ~160 s
        ("tests/data/test_amazon_preprocess.py", "tests/data/test_ingest.py", "tests/data/test_preprocess.py"),
    ),
    # The fault test: once "trained_serving" has built the model (either worker may take it).
    # Its app is SIGKILLed at the end, not stopped with Ctrl-C (alone: 115 s -> 96 s).
    ("live_faults", ("tests/serve/test_live_faults.py",)),  # 250 s, 273 s in the 1447 s run
    # Six Ray Train runs (the NaN test continues the resume test's run; the refit without validation, ~30 s).
    ("ray_train", ("tests/train/test_ray_train.py",)),  # 198 s
    # The sample model's build takes its EfficientNet/MiniLM outputs from the run's cache
    # (tests/support/feature_cache.py), filled by the "trained_serving" build.
    ("sample_model", ("tests/api/", "tests/eval/test_evaluate.py", "tests/index/test_embed.py")),  # ~200 s
    # 177 s, of which 110 s Ray Data preprocessing, now in process (alone: 110 s -> 70 s).
    ("sample_run", ("tests/train/test_sample_run.py",)),  # -> 76 s
    ("gpu_check", ("tests/test_gpu_check.py",)),  # 121 s -> 104 s, Ray Train and Serve in a subprocess
    ("one_model_door", ("tests/test_one_model_door.py",)),  # 60 s
    ("train", ("tests/train/",)),  # ~50 s: the other training tests (synthetic_features, trained_checkpoint)
    ("seed_backbone", ("tests/serve/test_seed_backbone.py",)),  # 46 s
    ("packaging", ("tests/test_packaging.py",)),  # 32 s, pip resolving both installs
    ("text_only", ("tests/serve/test_text_only.py",)),  # 30 s
    (
        "tiny_serving",  # ~20 s
        (
            "tests/serve/test_api.py",
            "tests/serve/test_batching.py",
            "tests/serve/test_core.py",
            "tests/serve/test_encoders.py",
            "tests/serve/test_filters_api.py",
            "tests/serve/test_live_catalog.py",
            "tests/serve/test_live_http.py",
            "tests/serve/test_web_facets.py",
        ),
    ),
)


def _group_index(nodeid: str) -> int | None:
    path = nodeid.split("::", 1)[0]
    for i, (_, paths) in enumerate(GROUPS):
        if any(path == p or (p.endswith("/") and path.startswith(p)) for p in paths):
            return i
    return None


def xdist_group(nodeid: str) -> str | None:
    """The group of a test id (``tests/...py::name``), or None for a test any worker may run."""
    i = _group_index(nodeid)
    return None if i is None else GROUPS[i][0]


def schedule_rank(nodeid: str) -> int:
    """Where a test's group comes in the hand-out order (heaviest first); ungrouped tests last."""
    i = _group_index(nodeid)
    return len(GROUPS) if i is None else i
