"""Where evaluations run: the local worker pool (`kernelgym.evaluation.Evaluator`) or a Ray pool.

`evaluate_batch(..., cluster=...)` and `Evaluator.evaluate_batch(..., cluster=...)` take
``"local"``, ``"ray"`` (the running Ray session, ``RAY_ADDRESS``, or a new local instance) or
``"ray://host:port"``; with no `cluster` argument the ``KERNELGYM_CLUSTER`` environment variable
decides (default ``local``). Ray is optional (``pip install 'kernelgym[ray]'``) and imported only
when a Ray cluster is asked for.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kernelgym.evaluation.clusters import ENV_VAR, parse_cluster
from kernelgym.evaluation.protocol import BACKEND_AUTO, MODE_STRICT

if TYPE_CHECKING:
    from kernelgym.cluster.ray_pool import RayPool
    from kernelgym.evaluation.evaluator import Evaluator, Reference
    from kernelgym.evaluation.verdict import Verdict

_POOLS: dict[tuple, RayPool] = {}
_REGISTERED: dict[str | None, RayPool] = {}
_POOLS_LOCK = threading.Lock()


def use_pool(pool: RayPool | None, address: str | None = None) -> None:
    """Make `pool` (a `RayPool` you configured: actor counts, limits...) the one that
    ``cluster="ray"`` (or ``"ray://..."`` for `address`) uses, whichever evaluator calls; None
    forgets it. Lets code that only passes ``cluster`` (or only sees ``KERNELGYM_CLUSTER``), such
    as the batched vector envs, run on a pool set up elsewhere."""
    with _POOLS_LOCK:
        if pool is None:
            _REGISTERED.pop(address, None)
        else:
            _REGISTERED[address] = pool


def get_ray_pool(address: str | None = None, evaluator: Evaluator | None = None, **kwargs: Any) -> RayPool:
    """The process-wide `RayPool` for `address` and `evaluator`'s settings (created on first use,
    kept for later batches so actors stay warm, closed at interpreter exit); a pool given to
    `use_pool` for `address` comes first."""
    from kernelgym.cluster.ray_pool import RayPool, evaluator_options

    key = (address, repr(evaluator_options(evaluator)), repr(sorted(kwargs.items())))
    with _POOLS_LOCK:
        registered = _REGISTERED.get(address)
        if registered is not None and not registered.closed and not kwargs:
            return registered
        pool = _POOLS.get(key)
        if pool is None or pool.closed:
            pool = _POOLS[key] = RayPool(address, evaluator=evaluator, **kwargs)
        return pool


def evaluate_batch_on_cluster(cluster: str | None, pairs: Sequence[tuple[Reference, str]], backend: str = BACKEND_AUTO,
                              mode: str = MODE_STRICT, *, seed: int | None = None, trials: int = 3,
                              timeout: float | None = None, evaluator: Evaluator | None = None) -> list[Verdict]:
    """`evaluate_batch` on a non-local cluster (what the evaluator's ``cluster=`` branch calls)."""
    kind, address = parse_cluster(cluster)
    if kind == "local":
        raise ValueError("evaluate_batch_on_cluster is for non-local clusters; use Evaluator.evaluate_batch")
    pool = get_ray_pool(address, evaluator)
    return pool.evaluate_batch(pairs, backend, mode, seed=seed, trials=trials, timeout=timeout)


@atexit.register
def _close_pools() -> None:
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for p in pools:
        p.close()


def __getattr__(name: str) -> Any:
    if name in ("RayPool", "ClusterError", "EvalActor"):
        from kernelgym.cluster import ray_pool as _rp

        return getattr(_rp, name)
    raise AttributeError(name)


__all__ = ["ENV_VAR", "ClusterError", "RayPool", "evaluate_batch_on_cluster", "get_ray_pool", "parse_cluster",
           "use_pool"]
