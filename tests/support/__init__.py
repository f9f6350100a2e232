"""Test harness: launchers for local Ray clusters, PostgreSQL and MLflow servers, and the multi-node
end-to-end driver. Used by the tests and `python -m tests.support.cluster_e2e`; not part of the
installed ``itemsage`` library (imported with the repo root on ``sys.path``: pytest's ``pythonpath``)."""
