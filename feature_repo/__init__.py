"""The Feast feature repository: the definitions, the store operations and the engines.

Importing this package first turns typeguard's `@typechecked` into what it is under
`python -O`, a no-op, before any of its modules imports Feast. Feast decorates 41 of its
functions with it, and the decorator re-parses and recompiles each one's module when it is
imported: ~3 s of the ~7 s Feast took to import here, in every process that opens the store
(the features task, the dataset and evaluate stages, every serving worker). `-O`, typeguard's
documented switch for production, would also drop every assert in every library; this drops
only Feast's run-time argument checks, which are there for Feast's own development.
"""

from __future__ import annotations

from typing import Any

import typeguard


def _unchecked(target: Any = None, **_options: Any) -> Any:
    """`typeguard.typechecked` as `python -O` makes it: the target itself."""
    return _unchecked if target is None else target


typeguard.typechecked = _unchecked
