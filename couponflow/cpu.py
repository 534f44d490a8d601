"""How many threads the gradient-boosting learners (scikit-learn's OpenMP) get: every core
while the machine has one idle, one when it has none.

OpenMP's threads spin at each of the many barriers of a tree fit, waiting for a thread the
scheduler has parked behind other jobs. Measured on the shared 2-core machine (the default
world's five baselines fitted, then priced over 30,000 users; docs/scaling.md): quiet, two
threads took 34 + 4 s against one thread's 44 + 8 s; with 12 to 16 runnable processes
one thread took 114 s against 422 s. The answers are the same on any thread count
(tests/test_evaluate.py), so choosing by the load changes how long a run takes, not what
it finds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits


def learner_threads() -> int:
    """Every core while the 1-minute load average leaves one idle, else one."""
    cores = os.cpu_count() or 1
    return cores if os.getloadavg()[0] < cores else 1


@contextmanager
def load_aware_threads() -> Iterator[int]:
    """Run the block on `learner_threads()` OpenMP and BLAS threads, chosen as it starts;
    yields the count."""
    threads = learner_threads()
    with threadpool_limits(threads):
        yield threads
