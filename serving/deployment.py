"""Old path of serving.deploy.deployment, kept only for benchmarks/bench_daily_run.py
(another branch is changing benchmarks/ now): new code imports serving.deploy.deployment.
Delete once it has moved (tests/test_import_graph.py lists this file among the shims).
"""

from serving.deploy.deployment import stop_deployment as stop_deployment
