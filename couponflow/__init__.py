"""couponflow: the shared core of the coupon recommender.

The core owns every fact two rooms must agree on (the data contract, the feature list,
the model's inputs, the policy's maths). It never imports Airflow, Feast, GX or BentoML.
"""

import os

__version__ = "0.1.0"

# One rounding for the network's matrix products on every machine. Torch's CPU products run
# in MKL, which picks its kernels by the CPU (AVX-512, AVX2, another vendor's) unless told
# otherwise: the same data and seed then trained a different network on another machine, a
# few last bits apart per step and more with every epoch, and the same demo day's challenger
# truly earned -54 on one clone and -347 on another. MKL reads this before its first call,
# so it is set here, in the package every process of the project imports before it trains
# or scores, and its children (DVC's stages, Airflow's tasks, the servers) inherit it.
# AVX2 is the branch every Intel CPU since 2013 runs alike at ~80 % of the CPU's own speed;
# COMPATIBLE (every vendor alike) cost 40 % of training's speed (docs/runbook.md, "Reproducible
# runs"). A value already in the environment wins.
os.environ.setdefault("MKL_CBWR", "AVX2")
