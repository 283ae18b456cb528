"""Admission to a GPU: its lock (timings alone, correctness runs shared) and its memory budget.

`GpuLock` orders what runs on one GPU at once; `MemoryBudget` hands out its memory by each
evaluation's footprint (`Reservation`). Both live in the parent (the evaluator) and are taken
through `pool.Worker.request` (the lock, at the worker's request) or by the pipeline (memory).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator


class GpuLock:
    """One GPU's lock: many shared holders (correctness runs) or one exclusive holder (timing).

    Once a timing waits, new shared holders wait behind it. Policy "writers_first" (default):
    shared holders wait until no timing waits at all, so a queue of timings runs back to back.
    "phase_fair": a shared holder that came while a timing waited or ran enters when that timing
    ends, before the next one, so correctness runs keep flowing between timings (on an H200 it did
    not raise throughput: timings then wait longer for the shared holders to leave; see
    benchmarks/NOTES.md). Workers take the lock through `Worker.request` (their GPU
    sections only; compiling happens outside it).

    A third mode, "background", is for GPU work that cannot be told apart from a long host
    compile: the first call of a ``torch.compile``d baseline compiles for seconds on the host, then
    autotunes and runs its kernels on the GPU. Such a section keeps timings out (a timing beside
    it was measured up to 2.5x slow on an H200) without stalling correctness runs: while it is held,
    shared holders still enter even when a timing waits, since the timing cannot start anyway.
    """

    MODES = ("shared", "exclusive", "background")
    MAX_SPANS = 4096   # exclusive holds remembered for `exclusive_spans`
    POLICIES = ("phase_fair", "writers_first")
    STATES = ("exclusive", "draining", "shared", "idle")

    def __init__(self, policy: str = "writers_first") -> None:
        if policy not in self.POLICIES:
            raise ValueError(f"unknown GPU lock policy {policy!r}; expected one of {self.POLICIES}")
        self.policy = policy
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._background = 0
        self._ends = 0        # exclusive sections ended so far
        self._admitted = 0    # shared holders let in by the last timing's end, not yet entered
        self._shared_waiting = 0
        self._seconds = dict.fromkeys(self.STATES, 0.0)
        self._since = time.perf_counter()
        self._spans: collections.deque[tuple[float, float]] = collections.deque(maxlen=self.MAX_SPANS)
        self._held_since = 0.0

    def _tick(self) -> None:
        """Charge the time since the last change to the state the lock was in (under `_cond`)."""
        now = time.perf_counter()
        if self._writer:
            state = "exclusive"
        elif self._readers or self._background:
            state = "draining" if self._waiting_writers else "shared"
        else:
            state = "idle"
        self._seconds[state] += now - self._since
        self._since = now

    def occupancy(self) -> dict[str, float]:
        """Seconds the lock has spent held exclusively (timing), draining (a timing waits for shared
        holders to leave), shared only, and idle: where a batch's GPU time went."""
        with self._cond:
            self._tick()
            return dict(self._seconds)

    def exclusive_spans(self, since: float = 0.0) -> list[tuple[float, float]]:
        """(start, end) of the exclusive holds (timings) that ended after `since`, oldest first, in
        `time.perf_counter` seconds (the last `MAX_SPANS`): when a batch's first timing could start,
        and the gaps in which no timing was ready."""
        with self._cond:
            return [span for span in self._spans if span[1] >= since]

    def acquire(self, mode: str) -> None:
        with self._cond:
            if mode == "shared":
                blocked = self._writer or (self._waiting_writers and not self._background)
                if blocked and self.policy == "phase_fair":
                    came = self._ends
                    self._shared_waiting += 1
                    try:
                        while self._writer or (self._waiting_writers and not self._background and self._ends == came):
                            self._cond.wait()
                    finally:
                        self._shared_waiting -= 1
                        if self._ends != came:   # let in by a timing's end (counted in _admitted then)
                            self._admitted = max(0, self._admitted - 1)
                elif blocked:
                    while self._writer or (self._waiting_writers and not self._background):
                        self._cond.wait()
                self._tick()
                self._readers += 1
            elif mode == "background":
                while self._writer or self._waiting_writers:
                    self._cond.wait()
                self._tick()
                self._background += 1
            elif mode == "exclusive":
                self._tick()
                self._waiting_writers += 1
                try:
                    while self._writer or self._readers or self._background or self._admitted > 0:
                        self._cond.wait()
                finally:
                    self._tick()
                    self._waiting_writers -= 1
                self._writer = True
                self._held_since = self._since
            else:
                raise ValueError(f"unknown lock mode {mode!r}")

    def release(self, mode: str) -> None:
        with self._cond:
            self._tick()
            if mode == "shared":
                self._readers = max(0, self._readers - 1)
            elif mode == "background":
                self._background = max(0, self._background - 1)
            else:
                if self._writer:
                    self._spans.append((self._held_since, self._since))
                self._writer = False
                self._ends += 1
                if self.policy == "phase_fair":   # everyone who waited for this timing goes next
                    self._admitted = self._shared_waiting
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self, mode: str) -> Iterator[None]:
        self.acquire(mode)
        try:
            yield
        finally:
            self.release(mode)

    @property
    def state(self) -> tuple[int, bool, int]:
        """(shared holders, exclusive held, exclusive waiting)."""
        with self._cond:
            return self._readers, self._writer, self._waiting_writers

    @property
    def background(self) -> int:
        """Background holders."""
        with self._cond:
            return self._background


class MemoryBudget:
    """One GPU's memory for evaluations, handed out by footprint (bytes): `reserve(n)` waits until
    `n` more fits under `budget`, so that an evaluation never runs out of memory because of its
    neighbours. Requests are admitted in arrival order (a large one waiting is not overtaken by
    small ones, so it cannot starve); one larger than the whole budget is admitted when nothing
    else holds any, and runs alone rather than waiting for ever. A holder may `resize` its share
    once it has measured it: that never waits (growing may overcommit the budget until holders
    leave; later requests wait for that), so two holders growing at once cannot deadlock.
    """

    def __init__(self, budget: int) -> None:
        if budget <= 0:
            raise ValueError(f"memory budget must be > 0 bytes, got {budget}")
        self.budget = int(budget)
        self._cond = threading.Condition()
        self._used = 0
        self._holders = 0
        self._queue: collections.deque[int] = collections.deque()
        self._tickets = 0
        self.waited = 0        # reservations that had to wait
        self.alone = 0         # reservations over the whole budget (run with nothing beside them)
        self.peak_used = 0

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    @property
    def holders(self) -> int:
        with self._cond:
            return self._holders

    def acquire(self, n: int, timeout: float | None = None) -> bool:
        """Wait until `n` bytes fit (or nothing else is held) and take them; False on timeout."""
        n = max(0, int(n))
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            ticket = self._tickets
            self._tickets += 1
            self._queue.append(ticket)
            waited = False
            try:
                while not (self._queue[0] == ticket and (self._used + n <= self.budget or self._holders == 0)):
                    waited = True
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()   # the next in line may fit now
            self._used += n
            self._holders += 1
            self.waited += waited
            self.alone += n > self.budget
            self.peak_used = max(self.peak_used, self._used)
            return True

    def resize(self, old: int, new: int) -> None:
        """A holder's share goes from `old` to `new` bytes (never waits; see the class docstring)."""
        with self._cond:
            self._used = max(0, self._used + max(0, int(new)) - max(0, int(old)))
            self.peak_used = max(self.peak_used, self._used)
            self._cond.notify_all()

    def release(self, n: int) -> None:
        with self._cond:
            self._used = max(0, self._used - max(0, int(n)))
            self._holders = max(0, self._holders - 1)
            self._cond.notify_all()

    @contextlib.contextmanager
    def reserve(self, n: int) -> Iterator[Reservation]:
        """`acquire(n)` for the block; the `Reservation` it yields can be resized inside it."""
        self.acquire(n)
        r = Reservation(self, n)
        try:
            yield r
        finally:
            self.release(r.bytes)


class Reservation:
    """A share of a `MemoryBudget` held by one evaluation."""

    def __init__(self, budget: MemoryBudget, n: int):
        self.budget, self.bytes = budget, max(0, int(n))

    def resize(self, n: int) -> None:
        n = max(0, int(n))
        self.budget.resize(self.bytes, n)
        self.bytes = n
