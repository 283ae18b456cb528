"""GPU timing, run inside a worker: per-forward times from a replayed CUDA graph, L2 flushed.

Method (`GraphBench`, what `bench` uses):

1. Prepare (`GraphBench.prepare`; the GPU may be shared): one eager pass over the input sets
   on the evaluation stream gives a first estimate of the forward's and the L2 flush's times, then
   one CUDA graph is captured with R forwards, each preceded by an L2 flush (zeroing a buffer of
   twice the device's L2, at least 64 MB) and bracketed by timing events recorded *inside* the
   graph (``torch.cuda.Event(external=True)``), so a sample is one forward's GPU time and excludes
   the flush and all host-side launch cost. Inputs rotate through the input sets (fixed tensors).
   R is chosen so that a replay holds about `replay_ms` of work. The eager estimate includes the
   host's launch gaps, several times a forward of a few microseconds, so the first replay (which
   also uploads the graph) reads the forward's and the flush's GPU times from the graph's events
   and, when those call for at least twice as many forwards (`replan`), the graph is captured again
   with the larger R: fewer replays, so fewer host round trips while the GPU is held alone
   (benchmarks/NOTES.md). The graph is then replayed for `warmup_ms` of GPU time (warm-up that
   costs the host almost nothing).
2. Measure (`GraphBench.measure`; needs the GPU alone, the evaluator holds its exclusive lock
   only here): a first replay settles the GPU and sizes the run from the forward's and the flush's
   GPU times inside the graph, then the graph is replayed M times; after every replay the WHOLE
   device is synchronised and an end event recorded, so each replay's span covers all the work it
   left anywhere on the device. The "tail" (last forward's end -> device idle) is kept; if its
   median exceeds the tail of an empty graph by more than `TAIL_SLACK_MS` (work that outlives the
   forwards' events), the excess is charged to the forwards (``tail_charge_ms``).
3. Statistics: R * M = clamp(rep_ms / (forward + flush), min_reps, max_reps) forward samples.
   Event timestamps are coarse next to a microsecond forward, so each replay's 10 %-trimmed mean
   over its R forwards is one value and ``median_ms`` (and mean, p20, p80, min, max, spread) is
   taken over the M replay values; ``forward_median_ms`` is the plain median over all samples.
   ``measure_ms`` is the host's wall time of step 2 (what a timing holds the GPU for). Each
   forward's start event is preceded by one more event: that empty section (two consecutive event
   nodes, the instrument's own cost: about 1.3 us on an H200, a fifth of a 6 us kernel) is measured
   R * M times, and its median (``event_overhead_ms``) is subtracted from every sample. One such
   section per replay was too few: its median moved by 0.5 us between runs (benchmarks/NOTES.md).

A forward that cannot be captured (host syncs, CPU work on tensors, unsupported ops) is timed
with `EagerBench` instead: per sample an L2 flush, a start event, the forward, a whole-device
``torch.cuda.synchronize()`` and then the end event, so work on other streams is counted (this
includes the host's launch time in the sample).

The graph of the candidate is kept so that the evaluator can replay it once more on fresh inputs
and compare one randomly chosen captured forward's outputs with the reference
(`GraphBench.replay_kept`): what was timed must compute the right function.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from kernelgym.evaluation.protocol import DEFAULT_BENCH, bench_budget  # noqa: F401 - DEFAULT_BENCH: timing.DEFAULT_BENCH as before

MIN_FLUSH_BYTES = 64 * 1024 * 1024
TAIL_SLACK_MS = 0.05
MAX_FORWARDS_PER_GRAPH = 200
MAX_WARMUP_REPLAYS = 50


def summarize(values: list[float]) -> dict[str, float]:
    """median/mean/min/max/p20/p80 in ms, and `spread` = (p80 - p20) / median."""
    if not values:
        raise ValueError("summarize() needs at least one value")
    v = sorted(values)
    n = len(v)

    def q(p: float) -> float:
        return v[min(n - 1, max(0, round(p * (n - 1))))]

    med = statistics.median(v)
    return {
        "median_ms": med, "mean_ms": statistics.fmean(v), "min_ms": v[0], "max_ms": v[-1],
        "p20_ms": q(0.2), "p80_ms": q(0.8), "n": n, "spread": (q(0.8) - q(0.2)) / med if med > 0 else 0.0,
    }


def plan(forward_ms: float, flush_ms: float, *, rep_ms: float, min_reps: int, max_reps: int,
         replay_ms: float) -> tuple[int, int]:
    """(forwards per graph R, replays M) for a forward of `forward_ms` preceded by a `flush_ms` flush.

    Samples = clamp(rep_ms / (forward + flush), min_reps, max_reps) -- the same budget rule as
    `EagerBench` and the serial harness of benchmarks/eval_throughput.py; R = forwards that fill
    about `replay_ms`, at most the samples and MAX_FORWARDS_PER_GRAPH; M = ceil(samples / R).
    """
    if min_reps < 1 or max_reps < min_reps:
        raise ValueError(f"need 1 <= min_reps <= max_reps, got {min_reps}, {max_reps}")
    per = max(forward_ms + flush_ms, 1e-4)
    samples = int(max(min_reps, min(max_reps, rep_ms / per)))
    r = int(max(1, min(samples, MAX_FORWARDS_PER_GRAPH, math.ceil(replay_ms / per))))
    return r, math.ceil(samples / r)


def replan(r: int, forward_ms: float, flush_ms: float, *, rep_ms: float, min_reps: int, max_reps: int,
           replay_ms: float) -> int | None:
    """A larger R for a graph captured with `r` forwards, from in-graph GPU times; None to keep `r`.

    Only a plan of at least twice `r` forwards is worth a second capture (the candidate's Python
    runs again for each forward): the eager estimate that chose `r` includes host launch gaps, so it
    errs towards too few forwards, and in-graph times read while other work shares the GPU err the
    same way, so a smaller R is never taken.
    """
    new, _ = plan(forward_ms, flush_ms, rep_ms=rep_ms, min_reps=min_reps, max_reps=max_reps, replay_ms=replay_ms)
    return new if new >= 2 * r else None


def flush_bytes() -> int:
    """Bytes zeroed to flush L2: twice the current device's L2, at least MIN_FLUSH_BYTES."""
    import torch

    l2 = int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or 0)
    return max(MIN_FLUSH_BYTES, 2 * l2)


def _trimmed_mean(values: list[float], cut: float = 0.1) -> float:
    """Mean without the lowest and highest `cut` fraction (none cut below 10 values)."""
    v = sorted(values)
    k = int(len(v) * cut)
    return statistics.fmean(v[k:len(v) - k] if len(v) - 2 * k > 0 else v)


def _tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _tensors(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _tensors(x)]
    return []


class EagerBench:
    """The fallback: per sample flush, start event, forward, whole-device sync, end event."""

    method = "eager"

    def __init__(self, fn: Callable[[list[Any]], Any], input_sets: list[list[Any]], **opts: Any):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("timing needs a CUDA device")
        if not input_sets:
            raise ValueError("timing needs at least one input set")
        self.fn, self.input_sets, self.opts = fn, input_sets, bench_budget(opts)

    def run(self) -> dict[str, Any]:
        import torch

        b, k = self.opts, len(self.input_sets)
        cache = torch.empty(flush_bytes() // 4, dtype=torch.int32, device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(5):
            cache.zero_()
            self.fn(self.input_sets[i % k])
        torch.cuda.synchronize()
        est = max((time.perf_counter() - t0) * 1000 / 5, 1e-3)
        n_warm = max(1, int(b["warmup_ms"] / est))
        n_rep = int(max(b["min_reps"], min(b["max_reps"], b["rep_ms"] / est)))
        for i in range(n_warm):
            self.fn(self.input_sets[i % k])
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        for i in range(n_rep):
            cache.zero_()
            torch.cuda.synchronize()
            starts[i].record()
            self.fn(self.input_sets[i % k])
            torch.cuda.synchronize()  # the whole device: work left on other streams is counted
            ends[i].record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        return {**summarize(times), "method": self.method, "warmup_runs": n_warm, "input_sets": k}


class GraphBench:
    """Per-forward GPU times from replays of a captured CUDA graph (see the module docstring).

    fn(inputs) runs one forward. stream: the stream to run and capture on (a non-default one; the
    current stream when None). keep: index of the captured forward whose outputs are kept for
    `replay_kept` (None: keep none). wrap: a function that runs a zero-argument callable and
    returns its result, used around the warm-up and around the capture (the candidate's sandbox).
    """

    method = "cuda_graph"

    def __init__(self, fn: Callable[[list[Any]], Any], input_sets: list[list[Any]], *, stream: Any = None,
                 keep: int | None = None, wrap: Callable[[Callable[[], Any]], Any] | None = None, **opts: Any):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("timing needs a CUDA device")
        if not input_sets:
            raise ValueError("timing needs at least one input set")
        self.fn, self.input_sets, self.opts = fn, input_sets, bench_budget(opts)
        self.stream = stream if stream is not None else torch.cuda.current_stream()
        if self.stream.cuda_stream == torch.cuda.default_stream().cuda_stream:
            raise ValueError("CUDA graphs cannot be captured on the default stream; pass another stream")
        self.keep = keep
        self.wrap = wrap or (lambda f: f())
        self.graph: Any = None
        self.kept: Any = None
        self.kept_index: int | None = None
        self.forwards = 0
        self._probe: list[Any] = []
        self._events_of: list[Any] = []
        self._cache: Any = None
        self._empty: Any = None   # (graph, events) with no forward: the reference tail
        self.warmup_replays = 0
        self.eager_forwards = 0   # R as the eager estimate planned it (before any second capture)

    def _events(self, n: int) -> list[Any]:
        import torch

        return [torch.cuda.Event(enable_timing=True, external=True) for _ in range(n)]

    def _capture(self, r: int, cache: Any) -> tuple[Any, list[Any]]:
        """Graph of r x (flush, probe event, event, forward, event); events[2i]..events[2i+1] is forward i,
        probes[i]..events[2i] the empty section just before it (the instrument's own cost)."""
        import torch

        g = torch.cuda.CUDAGraph()
        ev = self._events(2 * r + 1)
        self._probe = self._events(r)
        k = len(self.input_sets)
        keep = None if self.keep is None else self.keep % r
        kept = None
        with torch.cuda.stream(self.stream):
            g.capture_begin()
            try:
                for i in range(r):
                    cache.zero_()
                    # An empty section right before each forward: what a sample's two events cost by
                    # themselves, measured R x M times so that its median is steady (see `measure`).
                    self._probe[i].record(self.stream)
                    ev[2 * i].record(self.stream)
                    out = self.fn(self.input_sets[i % k])
                    ev[2 * i + 1].record(self.stream)
                    if i == keep:
                        kept = out  # held: its memory is not reused by later forwards of the graph
                    del out
                # a closing flush, so the last forward has an end boundary like the others
                cache.zero_()
                ev[2 * r].record(self.stream)
            finally:
                g.capture_end()
        self.kept, self.kept_index = kept, keep
        return g, ev

    def _capture_empty(self, cache: Any) -> None:
        """The graph with no forward whose tail `_empty_tail` measures (captured while preparing)."""
        import torch

        g = torch.cuda.CUDAGraph()
        ev = self._events(2)
        with torch.cuda.stream(self.stream):
            g.capture_begin()
            try:
                ev[0].record(self.stream)
                cache.zero_()
                ev[1].record(self.stream)
            finally:
                g.capture_end()
        self._empty = (g, ev)

    def _empty_tail(self, reps: int = 5) -> float:
        """Median tail of a graph with no forward: host sync + end-event latency of this machine."""
        import torch

        g, ev = self._empty
        tails = []
        end = torch.cuda.Event(enable_timing=True)
        for _ in range(reps + 1):
            with torch.cuda.stream(self.stream):
                g.replay()
            torch.cuda.synchronize()
            end.record(self.stream)
            end.synchronize()
            tails.append(ev[1].elapsed_time(end))
        return statistics.median(tails[1:])

    def _estimate(self, cache: Any) -> tuple[float, float]:
        """One eager pass over the input sets on the evaluation stream: (forward ms, flush ms)."""
        import torch

        k, s = len(self.input_sets), self.stream
        e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        with torch.cuda.stream(s):
            e0.record(s)
            for i in range(k):
                self.fn(self.input_sets[i % k])
            e1.record(s)
            cache.zero_()
            e2.record(s)
        torch.cuda.synchronize()
        return max(e0.elapsed_time(e1) / k, 1e-4), e1.elapsed_time(e2)

    def _replay(self) -> None:
        import torch

        with torch.cuda.stream(self.stream):
            self.graph.replay()

    def _in_graph(self) -> tuple[float, float]:
        """(mean forward ms, median flush ms) of the last replay, read from the graph's events."""
        ev, r = self._events_of, self.forwards
        fwd = statistics.fmean(ev[2 * i].elapsed_time(ev[2 * i + 1]) for i in range(r))
        return fwd, statistics.median(ev[2 * i + 1].elapsed_time(ev[2 * i + 2]) for i in range(r))

    def _install(self, r: int, cache: Any) -> None:
        """Capture a graph of r forwards, upload it with a first replay and wait for it."""
        import torch

        g, ev = self.wrap(lambda: self._capture(r, cache))
        # The graph's nodes refer to these events and write into the flush buffer: both must live as long
        # as the graph (a later replay_kept), or a replay records into freed events / zeroes freed memory.
        self.graph, self.forwards, self._events_of, self._cache = g, r, ev, cache
        self._replay()
        torch.cuda.synchronize()

    def prepare(self) -> None:
        """The part that may share the GPU: estimate, capture (again when R was far off), warm-up.

        A forward's first runs (lazy init, the estimate) and the capture run the candidate's Python
        (under `wrap`); the warm-up is `warmup_ms` of GPU time as replays of the captured graph,
        which cost the host almost nothing. None of it is measured, so other work on the GPU may
        run beside it; `measure` needs the GPU alone.
        """
        import torch

        b = self.opts
        budget = {k: b[k] for k in ("rep_ms", "min_reps", "max_reps", "replay_ms")}
        cache = torch.empty(flush_bytes() // 4, dtype=torch.int32, device="cuda")
        torch.cuda.synchronize()
        fwd_ms, flush_ms = self.wrap(lambda: self._estimate(cache))
        self._capture_empty(cache)
        self._install(plan(fwd_ms, flush_ms, **budget)[0], cache)
        fwd_ms, flush_ms = self._in_graph()
        self.eager_forwards = self.forwards
        r = replan(self.forwards, fwd_ms, flush_ms, **budget)
        if r is not None:
            self.release_graph()    # its memory pool goes before the next capture takes one
            self._install(r, cache)
            fwd_ms, flush_ms = self._in_graph()
        # Warm-up replays worth warmup_ms of GPU time (the uploading replay counts as one).
        self.warmup_replays = int(min(MAX_WARMUP_REPLAYS,
                                      1 + math.ceil(b["warmup_ms"] / (self.forwards * (fwd_ms + flush_ms)))))
        for _ in range(self.warmup_replays - 1):
            self._replay()
        torch.cuda.synchronize()

    def measure(self) -> dict[str, Any]:
        """The part that needs the GPU alone: replays of the prepared graph, timed (see module docstring)."""
        import torch

        t_measure = time.perf_counter()
        if self.graph is None:
            raise RuntimeError("measure() before prepare()")
        b, k, s, r, ev = self.opts, len(self.input_sets), self.stream, self.forwards, self._events_of
        torch.cuda.synchronize()
        empty_tail = self._empty_tail()
        end = torch.cuda.Event(enable_timing=True)

        pairs = [(ev[2 * i], ev[2 * i + 1]) for i in range(r)]

        def replay() -> tuple[list[float], list[float], float, float]:
            self._replay()
            torch.cuda.synchronize()  # the whole device, then the end of the replay's span
            end.record(s)
            end.synchronize()
            return ([a.elapsed_time(b) for a, b in pairs], [p.elapsed_time(a) for p, (a, _) in zip(self._probe, pairs)],
                    ev[2 * r].elapsed_time(end), self._probe[0].elapsed_time(end))

        # A first replay settles the GPU now that it is ours (not measured) and sizes the run from the
        # forward's and the flush's GPU times inside the graph.
        replay()
        fwd_ms, flush_ms = self._in_graph()
        per = fwd_ms + flush_ms
        samples = int(max(b["min_reps"], min(b["max_reps"], b["rep_ms"] / max(per, 1e-4))))
        m = math.ceil(samples / r)
        times: list[float] = []
        means: list[float] = []
        tails: list[float] = []
        spans: list[float] = []
        probes: list[float] = []
        for _ in range(m):
            fwd, probe, tail, span = replay()
            times += fwd
            means.append(_trimmed_mean(fwd))
            probes += probe
            tails.append(tail)
            spans.append(span)
        # The instrument's own cost (two back-to-back event nodes) is not the forward's.
        event_ms = max(0.0, statistics.median(probes))
        samples_stats = summarize([max(t - event_ms, 0.0) for t in times])
        # Event timestamps are coarse next to a microsecond forward: each replay's (trimmed) mean over
        # its R forwards is the sample the statistics are taken over, so that R forwards share one
        # rounding error; min / max / percentiles / spread are over those replay means.
        stats = summarize([max(x - event_ms, 0.0) for x in means])
        stats["n"] = len(times)
        excess = statistics.median(tails) - empty_tail
        charge = excess / r if excess > TAIL_SLACK_MS else 0.0
        if charge:
            for key in ("median_ms", "mean_ms", "min_ms", "max_ms", "p20_ms", "p80_ms"):
                stats[key] += charge
        return {**stats, "method": self.method, "forwards_per_replay": r, "replays": m,
                "eager_plan_forwards": self.eager_forwards,
                "warmup_replays": self.warmup_replays, "input_sets": k, "flush_ms": flush_ms,
                "tail_ms": statistics.median(tails), "empty_tail_ms": empty_tail, "tail_charge_ms": charge,
                "event_overhead_ms": event_ms, "forward_median_ms": samples_stats["median_ms"],
                "forward_spread": samples_stats["spread"], "replay_span_ms": statistics.median(spans),
                # host wall time of the measurement: what a timing holds the GPU for, beyond its lock hand-off
                "measure_ms": (time.perf_counter() - t_measure) * 1000}

    def run(self) -> dict[str, Any]:
        """`prepare` then `measure`, with whatever lock the caller holds around both."""
        self.prepare()
        return self.measure()

    def replay_kept(self, fresh: list[Any]) -> Any:
        """Copy `fresh` into every input set, replay the graph once, return the kept forward's outputs.

        Every captured forward then computes on `fresh`, so the kept one (chosen before capture, unknown
        to the forward) must equal the reference's outputs for `fresh`.
        """
        import torch

        if self.graph is None or self.kept_index is None:
            raise RuntimeError("no captured graph with kept outputs")
        src = _tensors(fresh)
        for inputs in self.input_sets:
            dst = _tensors(inputs)
            if len(dst) != len(src) or any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(dst, src)):
                raise ValueError("fresh inputs do not match the shapes of the timed inputs")
            with torch.no_grad():
                for a, b in zip(dst, src):
                    a.copy_(b)
        torch.cuda.synchronize()
        with torch.cuda.stream(self.stream):
            self.graph.replay()
        torch.cuda.synchronize()
        return self.kept

    def release_graph(self) -> None:
        """Free the graph and its memory pool (its events and flush buffer stay for a new capture)."""
        self.graph = None
        self.kept = None
        self.kept_index = None

    def close(self) -> None:
        """Free the graph and its memory pool (then the events and buffer its nodes refer to)."""
        self.release_graph()
        self._empty = None
        self._events_of, self._cache = [], None


def bench(fn: Callable[[list[Any]], Any], input_sets: list[list[Any]], *, stream: Any = None,
          graph: bool = True, hold: Callable[[str], Any] | None = None, **opts: Any) -> dict[str, Any]:
    """Time `fn(inputs)` on the current CUDA device; returns statistics in ms (see module docstring).

    With `graph` (default) a CUDA graph is used when the forward can be captured, else the eager
    method; `stream` is the non-default stream to run on (a fresh one when None). `hold(mode)`, a
    context manager of the GPU's lock: the graph is prepared under ``hold("shared")`` and measured
    (or the forward timed eagerly) under ``hold("exclusive")``; None: the caller's lock covers all.
    """
    return time_forward(fn, input_sets, stream=stream, graph=graph, hold=hold, **opts)[0]


def time_forward(fn: Callable[[list[Any]], Any], input_sets: list[list[Any]], *, stream: Any = None,
                 graph: bool = True, hold: Callable[[str], Any] | None = None, keep: int | None = None,
                 wrap: Callable[[Callable[[], Any]], Any] | None = None,
                 fatal: Callable[[BaseException], bool] | None = None,
                 explain: Callable[[BaseException], str] | None = None,
                 **opts: Any) -> tuple[dict[str, Any], GraphBench | None]:
    """`bench` for callers that need more: (statistics, the timed `GraphBench` still open when `keep`
    is set, for `GraphBench.replay_kept`; the caller closes it; else None).

    keep and wrap: as `GraphBench` (wrap also runs the eager fallback). A failure of the graph path
    falls back to the eager method, noted in ``stats["graph_error"]`` (`explain(exc)`, default the
    exception's type and first 300 characters), unless `fatal(exc)` (default: not an `Exception`),
    which is raised.
    """
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("timing needs a CUDA device")
    section = hold or (lambda mode: contextlib.nullcontext())
    stream = stream if stream is not None else torch.cuda.Stream()
    wrap = wrap or (lambda f: f())
    fatal = fatal or (lambda exc: not isinstance(exc, Exception))
    note = ""
    if graph:
        gb = GraphBench(fn, input_sets, stream=stream, keep=keep, wrap=wrap, **opts)
        try:
            with section("shared"):
                gb.prepare()
            with section("exclusive"):
                stats = gb.measure()
        except BaseException as exc:  # not capturable: time it eagerly instead
            if fatal(exc):
                raise
            gb.close()
            note = explain(exc) if explain else f"{type(exc).__name__}: {str(exc)[:300]}"
            reset_capture_state()
        else:
            if keep is None:
                gb.close()
                return stats, None
            return stats, gb
    with section("exclusive"), torch.cuda.stream(stream):
        stats = wrap(lambda: EagerBench(fn, input_sets, **opts).run())
    if note:
        stats["graph_error"] = note
    return stats, None


def reset_capture_state() -> None:
    """After a failed capture: drain the device and undo the capture state torch leaves behind.

    When a capture fails inside ``CUDAGraph.capture_end``, torch skips the epilogue that ends its
    CUDA generators' capture mode, and every later random draw outside a capture fails in that
    process (so a worker's next seeded ``get_inputs()`` would not match the other worker's). An
    empty capture runs the prologue and epilogue again and ends it.
    """
    import torch

    with contextlib.suppress(Exception):  # a capture error is not sticky; a real fault shows up later
        torch.cuda.synchronize()
    with contextlib.suppress(Exception):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(torch.cuda.Stream()):
            g.capture_begin()
            try:
                torch.empty(1, device="cuda").zero_()  # not an empty graph (torch warns on those)
            finally:
                g.capture_end()
        del g
        torch.cuda.synchronize()


def naive_bench(fn: Callable[[list[Any]], Any], input_sets: list[list[Any]], **opts: Any) -> dict[str, Any]:
    """`triton.testing.do_bench`-style timing for the serial harness (same budget rule as `plan`).

    Per sample: L2 flush (256 MB, as do_bench), start event, fn, end event on the current stream;
    one synchronisation at the end; no graph, no whole-device sync per sample.
    """
    import torch

    b = bench_budget(opts)
    k = len(input_sets)
    cache = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    s0, s1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn(input_sets[0])
    torch.cuda.synchronize()
    s0.record()
    for i in range(5):
        cache.zero_()
        fn(input_sets[i % k])
    s1.record()
    torch.cuda.synchronize()
    est = max(s0.elapsed_time(s1) / 5, 1e-4)
    n_warm = max(1, int(b["warmup_ms"] / est))
    n_rep = int(max(b["min_reps"], min(b["max_reps"], b["rep_ms"] / est)))
    for i in range(n_warm):
        fn(input_sets[i % k])
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for i in range(n_rep):
        cache.zero_()
        starts[i].record()
        fn(input_sets[i % k])
        ends[i].record()
    torch.cuda.synchronize()
    return {**summarize([a.elapsed_time(e) for a, e in zip(starts, ends)]), "method": "naive"}
