"""A network's scores of a whole population, on every core. Offline evaluation prices each
judged day and the population with every model, and the budget stage tomorrow's population;
a network scores on one thread (`couponflow.model.SCORING_THREADS`, so its answers do not
follow the machine), which left a core idle while the networks ran, a third of the 100k
evaluate stage (docs/scaling.md). Here the work is cut into tasks, each a chunk of users
(`user_chunks`) and a group of the ensemble's members, and the tasks run in forked
processes. The answers are the same bits as `couponflow.policy.score` of each chunk: a
member's outputs do not depend on the other members, and the chunks are the ones a single
process scores (scores of a chunk cut otherwise can differ in the last bit: MKL's kernels
follow the batch's size)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import fields

import numpy as np
import pandas as pd
from tqdm import tqdm

from couponflow.cpu import learner_threads
from couponflow.model import ArmTable, Recommender, member_count, user_chunks
from couponflow.policy import Scores, member_heads, scores_of_members

# What the forked scoring processes score: set in the parent just before the fork, read in
# the children, so the users' features are shared (copy on write), never pickled. The
# children run torch on one thread and nothing else.
_SCORING_INPUTS: tuple[Recommender, np.ndarray, ArmTable]

Task = tuple[slice, range | None]  # a chunk of users, the members answering (None: all)


# Fewer (user, arm) pairs than this score in the stage's own process: a fork and its pool
# cost ~0.05 s, in which one process scores ~20,000 pairs of a 5-member ensemble (300
# users x 17 arms took 0.04 s in one process and 0.08 s on two, 55,000 users 2.14 and
# 1.58 s; benchmarks/bench_scoring.py). The tests' small worlds stay in one process.
MIN_FORKED_PAIRS = 200_000


def scoring_processes(tasks: int, pairs: int) -> int:
    """How many processes score `pairs` (user, arm) pairs cut into `tasks` tasks: one per
    core while the load leaves one idle (couponflow.cpu), never more than the tasks; one
    for fewer than MIN_FORKED_PAIRS pairs, and in a daemonic process (which may not have
    children)."""
    if tasks < 2 or pairs < MIN_FORKED_PAIRS or multiprocessing.current_process().daemon:
        return 1
    return max(1, min(learner_threads(), tasks))


def member_groups(members: int, processes: int) -> list[range]:
    """The members cut into `processes` groups as even as they go (at most one a member):
    with fewer chunks than processes, or a chunk left over, the members share the cores."""
    groups = np.array_split(np.arange(members), min(processes, members))
    return [range(int(g[0]), int(g[-1]) + 1) for g in groups]


def _heads_of(task: Task) -> dict[str, np.ndarray]:
    net, users, table = _SCORING_INPUTS
    rows, members = task
    return member_heads(net, users[rows], table, members)


def score_users(
    net: Recommender,
    users: np.ndarray,
    arms: pd.DataFrame,
    margin: float,
    processes: int = 0,
    progress: bool = False,
) -> Scores:
    """`couponflow.policy.score` of every user, a chunk at a time (a whole population's
    pair inputs at once do not fit at scale), on `processes` processes (0: as
    `scoring_processes` says); with `progress`, a progress line of chunks. Read-only
    arrays."""
    global _SCORING_INPUTS
    table = ArmTable.from_frame(arms)
    chunks = user_chunks(len(users))
    pairs = len(users) * len(arms)
    at_once = processes or scoring_processes(len(chunks) * member_count(net), pairs)
    groups: list[range | None] = (
        [*member_groups(member_count(net), at_once)] if at_once > 1 else [None]
    )
    tasks = [(rows, group) for rows in chunks for group in groups]
    bar = tqdm(chunks, desc="scoring users", unit="chunk", leave=False, disable=not progress)
    _SCORING_INPUTS = (net, users, table)
    try:
        if at_once > 1:
            with multiprocessing.get_context("fork").Pool(at_once) as pool:
                parts = _combined(pool.imap(_heads_of, tasks), len(groups), bar, table, margin,
                                  net)  # fmt: skip
        else:
            parts = _combined(map(_heads_of, tasks), len(groups), bar, table, margin, net)
    finally:
        del _SCORING_INPUTS  # the parent's reference to the users
        bar.close()
    scores = Scores(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Scores)))
    for f in fields(Scores):
        getattr(scores, f.name).setflags(write=False)
    return scores


def _combined(
    heads: Iterator[dict[str, np.ndarray]],
    groups: int,
    chunks: tqdm,
    table: ArmTable,
    margin: float,
    net: Recommender,
) -> list[Scores]:
    """Each chunk's `Scores` from its groups' heads, combined as they come in: only a
    chunk's member heads are held at once."""
    parts = []
    for _ in chunks:
        answered = [next(heads) for _ in range(groups)]
        members = {k: np.concatenate([h[k] for h in answered]) for k in answered[0]}
        parts.append(scores_of_members(members, table, margin, net))
    return parts
