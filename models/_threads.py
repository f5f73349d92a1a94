"""Capping OpenMP threads per call, cheaply."""

from __future__ import annotations

import contextlib

from threadpoolctl import ThreadpoolController

__all__ = ["openmp_threads"]


class _Threads:
    controller: ThreadpoolController | None = None


def openmp_threads(n_threads: int | None) -> contextlib.AbstractContextManager[object]:
    """Cap OpenMP threads for one call; nothing to do (and nothing to pay) when uncapped.

    Finding the loaded thread pools costs milliseconds, more than a one-row prediction, so
    the controller is built once per process.
    """
    if n_threads is None:
        return contextlib.nullcontext()
    if _Threads.controller is None:
        _Threads.controller = ThreadpoolController()
    return _Threads.controller.limit(limits=n_threads, user_api="openmp")
