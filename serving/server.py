"""Old path of serving.deploy.server, kept only for training/train.py and benchmarks/
(another branch is changing them now): new code imports serving.deploy.server, and
free_port from couponflow.processes. Delete once they have moved (tests/test_import_graph.py
lists this file among the shims).
"""

from couponflow.processes import free_port as free_port
from serving.deploy.server import Server as Server
from serving.deploy.server import start_server as start_server
