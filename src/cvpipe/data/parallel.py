"""Ordered, bounded process-pool mapping for the data stages (validate's decode checks, prepare's letterboxing).

Results come back in input order whatever the worker count, so a stage's output is byte-identical with 1 and with
N workers. At most ``window`` items are in flight (submitted and not yet consumed), so memory stays bounded by the
window, not by the split size. One worker runs in this process: no pool, no pickling.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset limits it), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def resolve_workers(requested: int) -> int:
    """``runtime.data_workers``: 0 = every available core, else the number asked for (at least 1)."""
    if requested < 0:
        raise ValueError(f"data workers must be >= 0 (0 = every core), got {requested}")
    return available_cores() if requested == 0 else requested


class WorkerPool:
    """A process pool for several :meth:`map` calls (prepare's three splits share one); ``workers`` <= 1 maps in
    this process. The pool forks where the platform can (the workers start with the parent's imports: no
    re-import cost) and spawns elsewhere."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> "WorkerPool":
        if self.workers > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._executor = ProcessPoolExecutor(max_workers=self.workers,
                                                 mp_context=multiprocessing.get_context(method))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map(self, function: Callable[[Item], Result], items: Iterable[Item], *,
            window: int | None = None) -> Iterator[Result]:
        """``map(function, items)`` yielding in input order with at most ``window`` items in flight (default 8
        per worker). ``function`` must be a module-level (picklable) function; a worker's exception is re-raised
        here, at the item it belongs to."""
        if self._executor is None:
            yield from map(function, items)
            return
        window = window or 8 * self.workers
        pending: deque[Future[Result]] = deque()
        for item in items:
            pending.append(self._executor.submit(function, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def ordered_map(function: Callable[[Item], Result], items: Iterable[Item], *, workers: int,
                window: int | None = None) -> Iterator[Result]:
    """One :meth:`WorkerPool.map` on a pool of its own: ``map(function, items)`` over ``workers`` processes, in
    input order, at most ``window`` items in flight."""
    with WorkerPool(workers) as pool:
        yield from pool.map(function, items, window=window)
