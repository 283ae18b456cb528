"""The z3-backed CSP-DAG task sampler: random, valid, seeded PyTorch programs at a difficulty."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

from kernelgym.graph import Graph, InputSpec, Node
from kernelgym.sampler.checks import degeneracy
from kernelgym.sampler.emit import emit_source, title
from kernelgym.sampler.oracle import Rejected
from kernelgym.sampler.parallel import sample_parallel
from kernelgym.sampler.profiles import (
    SIZE_PROFILES,
    DifficultyProfile,
    SizeProfile,
    difficulty_profile,
    size_profile,
)
from kernelgym.sampler.sample import GraphSampler
from kernelgym.task import Task

MAX_DEGENERATE_REDRAWS = 100
KEEP_MULTISET_REDRAWS = 10  # degenerate completions of one op multiset before it is redrawn


class TaskSampler:
    """Samples `Task`s; keeps one `GraphSampler` (z3 model) per difficulty and counts rejections."""

    def __init__(self, sizes: str = "tiny", dtype: str = "float32", check: bool = True):
        self.sizes = size_profile(sizes).name
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"unsupported dtype {dtype!r}; choose float32, float16 or bfloat16")
        self.dtype = dtype
        self.check = check
        self._graphs: dict[int, GraphSampler] = {}
        self.degenerate: Counter[str] = Counter()
        self.sampled = 0
        self._remote: Counter[str] = Counter()  # rejections counted by worker processes

    def graph_sampler(self, difficulty: int) -> GraphSampler:
        if difficulty not in self._graphs:
            self._graphs[difficulty] = GraphSampler(difficulty, self.sizes)
        return self._graphs[difficulty]

    def allowed_ops(self, difficulty: int) -> list[str]:
        return [op.name for op in self.graph_sampler(difficulty).allowed]

    @property
    def rejections(self) -> Counter[str]:
        """Every redraw so far, by reason (infeasible op multisets and degenerate tasks)."""
        total: Counter[str] = Counter()
        for g in self._graphs.values():
            total.update(g.rejections)
        total.update({f"degenerate:{k}": v for k, v in self.degenerate.items()})
        total.update(self._remote)
        return total

    def sample(self, difficulty: int, seed: int, ops: list[str] | None = None) -> Task:
        """The task for (difficulty, seed): the same arguments always give the same task."""
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        gs = self.graph_sampler(difficulty)
        rng = random.Random(f"kernelgym:{difficulty}:{self.sizes}:{self.dtype}:{seed}")
        multiset = ops
        for attempt in range(MAX_DEGENERATE_REDRAWS):
            graph = gs.sample(rng, multiset)
            source = emit_source(graph, difficulty=difficulty, seed=seed, dtype=self.dtype, sizes=self.sizes)
            reason = degeneracy(source, graph) if self.check else None
            if reason is None:
                self.sampled += 1
                return make_task(graph, source, difficulty, seed, self.sizes, self.dtype)
            self.degenerate[reason] += 1
            # Redraw the structure and sizes but keep the drawn op multiset, so that ops prone to
            # degenerate completions (masked_fill, exp, ...) keep their uniform frequency; only a
            # multiset that keeps failing is redrawn.
            multiset = ops if ops is not None or attempt % KEEP_MULTISET_REDRAWS == KEEP_MULTISET_REDRAWS - 1 \
                else sorted(graph.ops)
        raise RuntimeError(f"no non-degenerate task for difficulty {difficulty}, seed {seed} "
                           f"after {MAX_DEGENERATE_REDRAWS} draws (ops={ops})")

    def sample_many(self, difficulties: Iterable[int], n: int, seed: int = 0, workers: int = 1) -> list[Task]:
        """n tasks per difficulty, with seeds seed, seed+1, ..., seed+n-1 (the same tasks for any
        number of `workers` processes; their rejections are added to this sampler's counts)."""
        jobs = [(d, seed + i) for d in difficulties for i in range(n)]
        if workers <= 1:
            return [self.sample(d, s) for d, s in jobs]
        tasks = []
        for task, rejected in sample_parallel(jobs, self.sizes, self.dtype, self.check, workers):
            self._remote.update(rejected)
            self.sampled += 1
            tasks.append(task)
        return tasks


def make_task(graph: Graph, source: str, difficulty: int, seed: int, sizes: str, dtype: str) -> Task:
    itemsize = 2 if dtype in ("float16", "bfloat16") else 4
    est = graph.estimate(itemsize)
    meta = {
        "sizes": sizes,
        "dtype": dtype,
        "flops": est["flops"],
        "bytes": est["bytes"],
        "input_shapes": [list(x.shape) for x in graph.inputs],
        "output_shapes": [list(graph.nodes[o].shape) for o in graph.outputs],
        "origin": "sampler",
        "dag": graph.expression(),
    }
    task_id = f"d{difficulty}_{sizes}_s{seed}"
    return Task(id=task_id, source=source, name=title(graph.ops), difficulty=difficulty, ops=graph.ops,
                seed=seed, graph=graph, meta=meta)


_DEFAULT: dict[tuple[str, str], TaskSampler] = {}


def default_sampler(sizes: str = "tiny", dtype: str = "float32") -> TaskSampler:
    """The process-wide TaskSampler for (sizes, dtype): its z3 models take time to build, so share it."""
    key = (sizes, dtype)
    if key not in _DEFAULT:
        _DEFAULT[key] = TaskSampler(sizes, dtype)
    return _DEFAULT[key]


def sample_task(difficulty: int, seed: int, sizes: str = "tiny", dtype: str = "float32",
                ops: list[str] | None = None) -> Task:
    """Sample one task with the process-wide sampler (z3 models are built once)."""
    return default_sampler(sizes, dtype).sample(difficulty, seed, ops)


__all__ = [
    "SIZE_PROFILES", "DifficultyProfile", "Graph", "GraphSampler", "InputSpec", "Node", "Rejected", "SizeProfile",
    "TaskSampler", "default_sampler", "degeneracy", "difficulty_profile", "emit_source", "make_task", "sample_task", "size_profile",
]
