"""Old path of serving.deploy.bento, kept only for benchmarks/bench_serving.py (another
branch is changing benchmarks/ now): new code imports serving.deploy.bento. Delete once it
has moved (tests/test_import_graph.py lists this file among the shims).
"""

from serving.deploy.bento import build_bento as build_bento
from serving.deploy.bento import store_model as store_model
