# Every target installs what it needs into .venv first (venv + pip, nothing by hand).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# FAISS build: cpu (faiss-cpu) or gpu (CUDA 13 faiss-gpu-cuvs with cuVS; docs/gpu.md).
FAISS  ?= cpu
STAMP  := $(VENV)/.installed-dev-$(FAISS)
CONFIG ?= experiments/configs/demo.yaml
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install browser demo test test-fast lint-imports lint test-e2e test-cluster bench clean help

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements/faiss-gpu.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	@case "$(FAISS)" in cpu|gpu) ;; *) echo "FAISS must be cpu or gpu, not '$(FAISS)'"; exit 1;; esac
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# One FAISS build only: both provide the `faiss` module, so switching removes the other first.
	@if [ "$(FAISS)" = gpu ]; then $(PY) -m pip uninstall -q -y faiss-cpu; else $(PY) -m pip uninstall -q -y faiss-gpu-cuvs; fi
	$(PY) -m pip install -q -e '.[$(FAISS),dev]'
	@# faiss-gpu-cuvs wants CUDA 13.2 runtime wheels, torch pins 13.0: see requirements/faiss-gpu.txt.
	if [ "$(FAISS)" = gpu ]; then $(PY) -m pip install -q --no-deps -r requirements/faiss-gpu.txt; fi
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the platform with its dev tools (FAISS=gpu: CUDA FAISS)

# The web-page test drives Debian's Chromium (Playwright's own browser download is not used).
browser:  ## install Debian's chromium for the web-page test (needs root; skipped otherwise)
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian chromium for the web-page test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "note: /usr/bin/chromium missing and not root: the web-page test will be skipped"; fi

demo: $(STAMP)  ## run the whole pipeline on the bundled sample (data/sample)
	$(PY) experiments/pipeline.py --config $(CONFIG)

# CI runs `make test`: every suite, the end-to-end ones included. Two pytest-xdist workers; each
# module that starts Ray or Serve, and each set of modules sharing a trained model, runs whole on one
# worker, heaviest group first (tests/support/xdist_groups.py). On 2 cores: 1691 s (2026-12-04) when
# one worker carried every in-process Ray suite; 1416 s (957 tests) with the groups; 1518 s (981
# tests, 2026-12-05 01:03, the multinode test alone 575 s). Then the services of the multinode test
# start side by side and its missing-config job runs beside preprocessing, the demo-config test
# preprocesses in process (alone 110 -> 70 s), the fault test's clean run trains beside the
# killed-worker run (alone 210 -> 182 s), gpu_check stops Serve without the 30 s drain, and the
# in-process model builds share one run-wide cache of EfficientNet/MiniLM outputs
# (tests/support/feature_cache.py): 1386 s (983 tests, 2026-12-05 02:01, pytest -n 2 --dist
# loadgroup; multinode 415 s, sample_run 76 s, fault test 307 s). That run had two failures: a Ray
# left running by a package fixture (fixed since; the test it broke, ~58 s, did not run) and the
# timing-sensitive batching test (mean gated batch 6.9 < 8 on the loaded box; it now asserts only
# the side-by-side comparison). On merged main with the fashion/Amazon tests (1004 tests,
# 2026-12-05 02:41, quiet box): 1517 s, all passed: multinode 417 s, but the serving builds that
# now start beside it took longer (trained model 125 s, soak set-up 87 s), so no net gain yet.
# Since then (2026-12-05, each measured alone, under the heavy lock): the multinode test's teardown
# skips Serve's 30 s drain and stops its services side by side (319 -> 271 s), its Ray cluster in
# `ray stop`'s order (teardown 30 -> 19 s; that run 347 s on a busier box, its jobs slower).
# Full run on merged main at e62cc67 (1007 tests, 2026-12-05 05:28, quiet box): 1486 s, all passed;
# multinode 363 s, live fault test 206 s, fault-tolerance driver test 173 s. At 7eac311 (1011 tests,
# 2026-12-05 08:22, quiet box): 1447 s, all passed; multinode 349 s, live fault test 273 s.
# Then (2026-12-05, each measured alone, under the heavy lock): the soak runs on test_serve_e2e's
# app (one Serve start less: the soak module's set-up was 87 s of that run), the killed driver's
# first attempt trains beside the other fault-test runs (198 -> 178 s), the SIGTERM test's app
# starts beside the `serve run` test's (69 -> 62 s), the live fault test SIGKILLs its app at the
# end instead of a Ctrl-C shutdown (115 -> 96 s), and the cluster config hashes the 300-item sample
# into 2 partitions instead of 8 (multinode 246 -> 217 s). Full run with them (61c056f, 1011 tests,
# 2026-12-05 10:25, heavy lock held): 1438 s, all passed; multinode 429 s, fault test 185 + 76 s,
# live fault test 183 s, trained model 156 s, Amazon preprocessing set-up 141 s. So the side-by-side
# starts gain alone but hardly in a full run: its two workers already keep both cores busy, and a
# test that overlaps its own waits slows the other worker's tests; only less CPU work shortens it.
# On merged main at 4101c8e (1012 tests with the refit-without-validation run, 2026-12-05 10:52,
# quiet box): 1490 s, all passed; multinode 445 s, killed worker 186 s, live fault test 177 s. At
# c4df5b1 (the fashion title-prefix count in 8 hash partitions, not Ray's 200; 11:25, quiet box):
# 1367 s, all passed; multinode 337 s, killed worker 207 s, live fault test 183 s.
# At d4a6393 (13:29, quiet box, heavy lock): 1371 s, all passed; the two workers ended 3 s apart
# (per-test start/end logged per worker), so balance was not the problem; a third worker (-n 3) ran
# every group 1.5-1.9x slower (load average 33; stopped after 12 minutes). Then the tests' Rays keep
# their idle workers instead of restarting one per Ray Data task (ray_data group 471 -> 160 s) and
# the multinode test's mlflow server runs no job consumers: 1238 s (ec81721, 1012 passed, 13:57).
# Merged on main (a6a1151, 14:19, quiet box, heavy lock): 1215 s, 1012 passed; multinode 280 s, killed
# worker 231 s, live fault test 181 s, `serve run` config 167 s.
# Session 16 (2026-12-05, heavy lock, back to back): the tests' Ray Train runs poll their workers
# every 0.5 s and start no PreemptionWatcher (tests/conftest.py; alone: test_ray_train.py 300 -> 250 s
# of CPU, test_fault_tolerance.py 374 -> 326 s): 1267 s, 1012 passed; the same tree with Ray's
# defaults 1247 s (one soak failure, a replica's title misread, fixed in 3dd312f). A full run's
# noise (+-30 s) hides those module gains.
# With the soak's replica-title fix (f44eee2, 1013 tests, 17:13): 1205 s, all passed.
# Session 17 (1ce33dc, 1017 tests with the split-seed and script-loader changes, 18:26, heavy lock):
# 1193 s, all passed; multinode 305 s, killed worker 218 s, `serve run` config 183 s.
# At the 20-minute budget, not under it: 1200 s here, and ~960 s to leave room for CI (~1.25x slower).
# Session 21 (8fa83f6, 1033 tests, a fresh machine, heavy lock): 797 s, all passed; multinode 207 s,
# killed worker 128 s, live fault test 109 s, `serve run` config 90 s (CI at session 19's tree: 1133 s
# with the install).
# Session 22 (1035 tests, fresh clones running .ci/run, install included): 813 s (68ba93b) and
# 791 s (89de346), all passed; 16.6 and 15.7 min in all. CI at session 21's tree: 1025 s.
# The CPU left to cut is mostly start-ups: every module with Ray starts its own local Ray (GCS,
# raylet, dashboard, workers importing torch) and every Serve app its replicas.
XDIST ?= -n 2 --dist loadgroup
test: $(STAMP) browser lint-imports lint  ## all tests: import contracts, lint and type checks, unit, integration, end-to-end, multi-node cluster (what CI runs)
	$(PY) -m pytest $(XDIST)

test-fast: $(STAMP) lint-imports  ## import contracts, unit and integration tests only (a few minutes)
	$(PY) -m pytest $(XDIST) -m "not slow"

# The import contracts in .importlinter (docs/architecture.md): a few seconds, so `test` and
# `test-fast` check them before any suite starts.
lint-imports: $(STAMP)  ## check that the stages import in one direction only (import-linter)
	$(VENV)/bin/lint-imports

test-e2e: $(STAMP) browser  ## only the end-to-end suites: Ray clusters, fault injection, Serve, Chromium
	$(PY) -m pytest $(XDIST) -m slow

# PostgreSQL comes from Debian's postgresql package (installed by the test when root and missing).
test-cluster: $(STAMP)  ## 2-node `ray start` cluster + PostgreSQL-backed MLflow: Jobs API pipeline, serve deploy, HTTP query
	$(PY) -m pytest -m cluster -s tests/cluster

bench: $(STAMP)  ## benchmark scripts on the full downloads in data/ (see experiments/bench/)
	$(PY) experiments/bench/model.py
	$(PY) experiments/bench/preprocess.py
	$(PY) experiments/bench/index.py

clean:  ## remove run outputs (keeps .venv)
	rm -rf artifacts mlruns mlflow.db .pytest_cache

# Lint, format and type checks of the library (pyproject.toml: [tool.ruff], [tool.mypy]); about a
# minute, so `test` runs them before any suite starts.
lint: $(STAMP)  ## ruff lint on everything, ruff format check and mypy on platform/
	$(VENV)/bin/ruff check platform experiments deployments tests
	$(VENV)/bin/ruff format --check platform
	$(VENV)/bin/mypy
