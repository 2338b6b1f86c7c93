"""How work is executed: the local engine (default, in-process) or Ray (optional extra, a cluster).

Both engines give the same tables. A verb asks :func:`mapper` for an ordered map over its
per-row work (hashing files, checking headers), :func:`fold_mapper` for where the probe's final
k-fold models run, and :func:`check_engine` validates the option before anything is written;
the Ray-specific stages live in :mod:`labelkit.engines.ray`, which is only imported when
``engine='ray'``.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Iterator

from labelkit.errors import LabelkitError, parameter_error

ENGINES = ("local", "ray")
RAY_INSTALL = 'pip install "labelkit[ray]"'

Mapper = Callable[[Callable, Iterable], Iterator]


def check_engine(engine: str, func: str = "labelkit") -> str:
    """Return `engine` if it is known and usable here, else raise a one-line user error.

    ``'ray'`` needs the optional extra; without it the error names the install command.
    """
    if engine not in ENGINES:
        raise parameter_error("engine", func, f"one of {', '.join(ENGINES)}", engine)
    if engine == "ray":
        require_ray()
    return engine


def require_ray():
    """Return the imported `ray` module, or raise the 'install labelkit[ray]' user error."""
    try:
        import ray
        import ray.data  # noqa: F401  (the extra is ray[data]; plain ray lacks it)
    except ImportError:
        raise LabelkitError(f"--engine ray needs Ray Data, which is not installed; run: {RAY_INSTALL} "
                            "(or pip install \"ray[data]>=2.60\").") from None
    return ray


def mapper(engine: str = "local", *, ray_address: str | None = None, workers: int = 4) -> Mapper:
    """Return ``map_fn(func, items)``: an iterator of ``func(item)`` in the order of `items`.

    Local runs on a thread pool of `workers`; Ray runs batches of items as tasks on the cluster
    at `ray_address` (``None``: ``RAY_ADDRESS``, else a new local cluster).
    """
    check_engine(engine)
    if engine == "local":
        from labelkit.engines.local import thread_map

        return lambda func, items: thread_map(func, items, workers=workers)
    from labelkit.engines.ray import task_map

    return lambda func, items: task_map(func, items, address=ray_address)


def fold_mapper(engine: str = "local", *, ray_address: str | None = None) -> Callable | None:
    """Return the ``fold_map`` for :func:`labelkit.probe.get_out_of_sample_probs`: None (its models
    fit one after the other in this process) for the local engine; for Ray, one task per model on
    the cluster at `ray_address` (:func:`labelkit.engines.ray.fold_map`).
    """
    if check_engine(engine) == "local":
        return None
    from labelkit.engines.ray import fold_map

    return functools.partial(fold_map, address=ray_address)
