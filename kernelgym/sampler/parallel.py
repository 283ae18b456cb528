"""Sampling in several processes: each task is a function of its (difficulty, seed) alone, so a
pool of workers returns the same tasks as one process."""

from __future__ import annotations

_WORKER_SAMPLER = None


def _init_worker(sizes: str, dtype: str, check: bool) -> None:
    global _WORKER_SAMPLER
    import torch

    torch.set_num_threads(1)  # one core per worker; the checks run tiny tensors
    from kernelgym.sampler import TaskSampler

    _WORKER_SAMPLER = TaskSampler(sizes, dtype, check)


def _sample_one(job: tuple[int, int]):
    """The task and the rejections its draw cost (so the caller can count them)."""
    difficulty, seed = job
    before = _WORKER_SAMPLER.rejections
    task = _WORKER_SAMPLER.sample(difficulty, seed)
    return task, dict(_WORKER_SAMPLER.rejections - before)


def sample_parallel(jobs: list[tuple[int, int]], sizes: str, dtype: str = "float32", check: bool = True,
                    workers: int = 2) -> list:
    """Tasks for (difficulty, seed) jobs, in order, from `workers` processes (forkserver).

    Each task is a function of its (difficulty, seed) alone (`kernelgym.sampler.sample`), so the
    result is the same list whatever the number of workers and however jobs are split. The pool
    is kept for later calls with the same settings (and terminated at exit). Returns (task,
    rejections of that draw) pairs.
    """
    key = (sizes, dtype, check, workers)
    if key not in _POOLS:  # kept for later calls (workers keep their z3 models warm)
        import atexit
        import multiprocessing as mp

        methods = mp.get_all_start_methods()
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        _POOLS[key] = ctx.Pool(workers, initializer=_init_worker, initargs=(sizes, dtype, check))
        atexit.register(_POOLS[key].terminate)
    return _POOLS[key].map(_sample_one, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))


_POOLS: dict = {}
