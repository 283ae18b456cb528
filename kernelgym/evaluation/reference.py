"""The reference jobs, run in a REFERENCE worker (a process that never runs candidate code).

`run_reference` builds the seeded model and each trial's inputs, computes the outputs on the
evaluation device and keeps them there, in the worker's store, under the evaluation's key; the
parent gets only metadata (op counts, output shapes and dtypes, fingerprints of the inputs and
weights). `compare` judges a candidate's outputs against the stored ones on the same device (or
rebuilds them from the seed when this worker no longer has them). `prepare_baselines` /
`time_baselines` time the eager and torch.compile reference (see `timing`).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from kernelgym.evaluation.jobs import (
    Fingerprints,
    clone_tree,
    describe,
    fingerprint,
    seeded_task,
    sync,
    to_device,
    trial_inputs,
)
from kernelgym.evaluation.protocol import trial_seed

DEFAULT_STORE_BYTES = 2 << 30


def _gpu(state: dict[str, Any]) -> Any:
    return state["gpu"]


def _nbytes(obj: Any) -> int:
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return int(obj.element_size() * obj.numel())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _build(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Model, inputs and outputs of every trial for (source, seed); raises on a broken reference."""
    import torch

    from kernelgym.evaluation.check import reference_problem
    from kernelgym.evaluation.guards.runtime import record_torch_ops

    device, seed, n = msg["device"], int(msg["seed"]), int(msg["trials"])
    # a task too large for the GPU (`EvaluatorOptions.one_trial_on_gpu`): each trial's inputs and
    # outputs go to the host once computed, so the GPU holds one trial at a time
    host = "cpu" if msg.get("one_trial") else None
    progress("reference import")
    try:
        module, init_inputs, model = seeded_task(msg["source"], seed, "kernelgym_reference")
        state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    except BaseException as exc:  # noqa: BLE001 - a broken reference is a verdict, not a worker crash
        raise _RefError("reference init", describe(exc)) from None
    trials, ops, aliases = [], None, False
    fps = Fingerprints()
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if cuda:
        # What this build holds at its peak (weights, every trial's inputs and outputs, a forward's
        # temporaries), above what the worker held before: the evaluation's measured GPU footprint.
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    # One shared GPU section for the whole build: each section is a round trip to the parent and may
    # wait behind queued timings.
    with _gpu(state).hold("shared"):
        try:
            model = model.to(device).eval()
        except BaseException as exc:  # noqa: BLE001
            raise _RefError("reference init", describe(exc)) from None
        for t in range(n):
            progress(f"reference trial {t}")
            ts = trial_seed(seed, t)
            try:
                inputs = trial_inputs(module, ts, device)
                fps.add(inputs)  # of what the candidate worker will rebuild, before any forward
                dev_inputs = to_device(inputs, device)
                kept = clone_tree(dev_inputs)  # a reference may modify its inputs in place
                with torch.no_grad():
                    if t == 0 and msg.get("want_ops"):
                        out, counter = record_torch_ops(model, *dev_inputs)
                        ops = {str(k): int(v) for k, v in counter.items()}
                    else:
                        out = model(*dev_inputs)
                sync(device)
                aliases = aliases or _shares_storage(out, dev_inputs)
            except BaseException as exc:  # noqa: BLE001
                raise _RefError(f"reference trial {t}", describe(exc)) from None
            items = list(out) if isinstance(out, (list, tuple)) else [out]
            outputs = [o.detach().clone() if isinstance(o, torch.Tensor) else
                       (torch.as_tensor(o) if isinstance(o, (bool, int, float)) else f"<{type(o).__name__}>")
                       for o in items]
            if host is not None:
                kept, outputs = to_device(kept, host), to_device(outputs, host)
                del dev_inputs, out, items
            trials.append({"seed": ts, "inputs": kept, "outputs": outputs})
        for tr, fp in zip(trials, fps.read()):   # one per trial, in order
            tr["fingerprint"] = fp
        problem = reference_problem([tr["outputs"] for tr in trials])
    peak = int(torch.cuda.max_memory_allocated() - base) if cuda else None
    return {"model": model, "init_inputs": init_inputs, "state_dict": state_dict, "trials": trials, "ops": ops,
            "aliases": aliases, "problem": problem, "gpu_peak_bytes": peak}


class _RefError(Exception):
    def __init__(self, stage: str, error: str):
        super().__init__(error)
        self.stage, self.error = stage, error


def _store(state: dict[str, Any]) -> OrderedDict:
    return state.setdefault("store", OrderedDict())


def _put(state: dict[str, Any], key: str, outputs: list[list[Any]], limit: int, force: bool = False) -> bool:
    """Keep `outputs` under `key` (LRU by bytes); False when they alone exceed the limit, unless
    `force` (outputs on the host), which keeps them alone."""
    size = _nbytes(outputs)
    store = _store(state)
    store.pop(key, None)
    if force:
        store.clear()
        store[key] = (outputs, size)
        return True
    if size > limit:
        return False
    store[key] = (outputs, size)
    total = sum(s for _, s in store.values())
    while total > limit and len(store) > 1:
        _, (_, old) = store.popitem(last=False)
        total -= old
    return True


def run_reference(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Seeded: init inputs and weights from `seed`, then each trial's inputs and outputs (kept here)."""
    state.pop("reference", None)
    try:
        ref = _build(state, msg, progress)
    except _RefError as exc:
        return {"status": "error", "stage": exc.stage, "error": exc.error}
    outputs = [tr["outputs"] for tr in ref["trials"]]
    if ref["problem"]:
        return {"status": "bad_output", "error": ref["problem"]}
    # one trial on the GPU: the outputs are on the host, kept whatever their size (a rebuild would
    # cost the whole reference again); the baselines are timed on the first trial's inputs alone
    one = bool(msg.get("one_trial"))
    stored = _put(state, msg["key"], outputs, int(msg.get("store_bytes", DEFAULT_STORE_BYTES)), force=one)
    inputs = [tr["inputs"] for tr in ref["trials"]]
    state["reference"] = {"model": ref["model"], "inputs": [to_device(inputs[0], msg["device"])] if one else inputs}
    return {
        "status": "ok", "stored": stored, "ops": ref["ops"], "aliases_input": ref["aliases"],
        "seeds": [tr["seed"] for tr in ref["trials"]],
        "gpu_peak_bytes": ref["gpu_peak_bytes"],
        "output_bytes": max((_nbytes(outs) for outs in outputs), default=0),
        "outputs": [[{"dtype": str(o.dtype).removeprefix("torch."), "shape": list(o.shape)} for o in outs]
                    for outs in outputs],
        "input_dtypes": sorted({str(x.dtype).removeprefix("torch.") for x in _flat(ref["trials"][0]["inputs"])
                                if hasattr(x, "is_floating_point") and x.is_floating_point()}),
        "fingerprints": {"init_inputs": fingerprint(ref["init_inputs"]),
                         "state_dict": fingerprint(ref["state_dict"]),
                         "trials": [tr["fingerprint"] for tr in ref["trials"]]},
    }


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a nested list / tuple / dict (each storage counted once)."""
    import torch

    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            key = st._cdata
            if key not in seen:
                seen.add(key)
                total += int(st.nbytes())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
    return total


def estimate_footprint(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """The task's sizes without allocating them: the model, its inputs and one forward on the meta
    device (shapes only). Bytes of the weights, of one trial's inputs and outputs, and the peak of the
    tensors a forward creates while it runs (its temporaries and outputs), for the parent to admit the
    evaluation onto a GPU and to size the workers' host-memory limits before anything real is built.
    Also reports the GPU's total memory. A task that cannot run on the meta device (explicit
    devices, data-dependent ops) gets ``status: "error"``: the parent then falls back to a default."""
    import torch

    from kernelgym import task as taskmod
    from kernelgym.evaluation.jobs import seed_all

    out: dict[str, Any] = {"status": "ok"}
    if torch.cuda.is_available():
        out["gpu_total_bytes"] = int(torch.cuda.get_device_properties(0).total_memory)
    progress("footprint")
    try:
        module = taskmod.exec_source(msg["source"], "kernelgym_footprint", filename="<reference>")
        seed_all(0)
        with torch.device("meta"), torch.no_grad():
            model = module.Model(*module.get_init_inputs())
            inputs = list(module.get_inputs())
            live = _LiveBytes()
            with live:
                outputs = model(*inputs)
            out.update(weight_bytes=_tensor_bytes(list(model.state_dict().values())),
                       input_bytes=_tensor_bytes(inputs), output_bytes=_tensor_bytes(outputs),
                       forward_peak_bytes=live.peak)
    except BaseException as exc:  # noqa: BLE001 - a task the meta device cannot run: estimated otherwise
        out.update(status="error", error=describe(exc))
    finally:
        import sys

        sys.modules.pop("kernelgym_footprint", None)
    return out


def _live_bytes_mode() -> Any:
    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveBytes(TorchDispatchMode):
        """Bytes of the tensors created inside it and still alive, and their peak (new storages only:
        views and in-place results share an existing one)."""

        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0

        def _free(self, n: int) -> None:
            self.live -= n

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            import weakref

            import torch
            from torch.utils._pytree import tree_leaves

            result = func(*args, **(kwargs or {}))
            if getattr(func, "is_view", False):
                return result
            given = {id(a) for a in tree_leaves((args, kwargs or {})) if isinstance(a, torch.Tensor)}
            for t in tree_leaves(result):
                if isinstance(t, torch.Tensor) and id(t) not in given:
                    n = int(t.untyped_storage().nbytes())
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, n)
            return result

    return LiveBytes


def _LiveBytes() -> Any:  # noqa: N802 - a class made on first use (torch is imported lazily here)
    return _live_bytes_mode()()


def _flat(obj: Any) -> list[Any]:
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _flat(v)]
    return [obj]


def compare(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Compare candidate outputs (``items``: [trial index, outputs]) with the stored reference outputs.

    A worker that no longer holds the key rebuilds the reference from the seed first. ``drop``
    forgets the key afterwards (the evaluation's last comparison).
    """
    import torch

    from kernelgym.evaluation.check import compare_trial

    store = _store(state)
    hit = store.get(msg["key"])
    recomputed = hit is None
    if hit is None:
        try:
            ref = _build(state, msg, progress)
        except _RefError as exc:
            return {"status": "error", "error": f"reference rebuilt for comparison failed in {exc.stage}: "
                                                f"{exc.error}"}
        outputs = [tr["outputs"] for tr in ref["trials"]]
        seeds = [tr["seed"] for tr in ref["trials"]]
        del ref
    else:
        store.move_to_end(msg["key"])
        outputs = hit[0]
        seeds = [trial_seed(int(msg["seed"]), t) for t in range(len(outputs))]
    progress("compare")
    results = []
    with _gpu(state).hold("shared"), torch.no_grad():
        for t, cand in msg["items"]:
            t = int(t)
            if not 0 <= t < len(outputs):
                return {"status": "error", "error": f"no reference trial {t}"}
            ref_dev = outputs[t][0].device if outputs[t] and hasattr(outputs[t][0], "device") else "cpu"
            got = [to_device(c, ref_dev) for c in (cand if isinstance(cand, (list, tuple)) else [cand])]
            results.append(compare_trial(t, seeds[t], outputs[t], got).to_dict())
    if msg.get("drop"):
        store.pop(msg["key"], None)
    return {"status": "ok", "results": results, "recomputed": recomputed}


def drop(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    _store(state).pop(msg["key"], None)
    return {"status": "ok"}


def _shares_storage(out: Any, inputs: list[Any]) -> bool:
    """True if any output tensor shares storage with an input tensor (a view or the input itself)."""
    import torch

    def ptrs(xs: Any) -> set[int]:
        items = xs if isinstance(xs, (list, tuple)) else [xs]
        return {x.untyped_storage().data_ptr() for x in items
                if isinstance(x, torch.Tensor) and x.untyped_storage().nbytes() > 0}

    return bool(ptrs(out) & ptrs(inputs))


def _stream(state: dict[str, Any]) -> Any:
    import torch

    if "stream" not in state:
        state["stream"] = torch.cuda.Stream()
    return state["stream"]


AUTOTUNE_RECORD_MAX = 32  # kernels whose config timings a baseline keeps


def _autotune_entry(tuner: Any, timings: Any) -> dict[str, Any]:
    """One kernel's autotuning as Inductor saw it: each config's time (ms) and the one it keeps
    (the fastest)."""
    meta = getattr(tuner, "inductor_meta", None)
    name = ((meta.get("kernel_name") if isinstance(meta, dict) else None)
            or getattr(getattr(tuner, "fn", None), "__name__", None) or type(tuner).__name__)
    per = sorted(((str(getattr(launcher, "config", launcher)), float(ms)) for launcher, ms in timings.items()),
                 key=lambda kv: kv[1]) if isinstance(timings, dict) else []
    return {"kernel": str(name), "configs_ms": dict(per), "chosen": per[0][0] if per else None}


@contextlib.contextmanager
def autotune_exclusive(gpu: Any, autotuner: Any = None, record: list[dict[str, Any]] | None = None
                       ) -> Iterator[None]:
    """While active, Inductor's autotuning of a compiled kernel (it times every config of the
    kernel at its first launch, `CachingAutotuner.benchmark_all_configs`) holds the GPU lock
    exclusively, like any timing: a correctness run beside it can make it keep a slower config
    for good, and the torch.compile baseline with it (on an H200 the same task's compiled
    baseline read 0.019 ms in three runs and 0.041 ms in a fourth). Each kernel's config timings
    and choice go to `record` when given (`timings.compile.autotune` in verdicts: the compiled
    baselines still moved between runs with this lock, and the record says whether Inductor chose
    differently). Without Inductor's autotuner (another torch version) it does nothing.
    `autotuner`: the class to patch (tests)."""
    if autotuner is None:
        try:
            from torch._inductor.runtime.triton_heuristics import CachingAutotuner as autotuner
        except Exception:  # noqa: BLE001 - no Inductor runtime: nothing to guard
            autotuner = None
    original = getattr(autotuner, "benchmark_all_configs", None)
    if original is None:
        yield
        return

    def benchmark_all_configs(self: Any, *args: Any, **kwargs: Any) -> Any:
        with gpu.hold("exclusive"):
            timings = original(self, *args, **kwargs)
        if record is not None and len(record) < AUTOTUNE_RECORD_MAX:
            with contextlib.suppress(Exception):   # a record is a diagnostic: never fail the baseline
                record.append(_autotune_entry(self, timings))
        return timings

    autotuner.benchmark_all_configs = benchmark_all_configs
    try:
        yield
    finally:
        autotuner.benchmark_all_configs = original


def prepare_baselines(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """torch.compile the reference and run it once (slow; done outside the exclusive timing lock).

    The first compiled call compiles on the host (seconds to minutes), then autotunes and runs
    its kernels on the GPU, in one go: it holds the lock in "background" mode, which keeps timings
    out but lets correctness runs go on (see `pool.GpuLock`), except while Inductor times its
    kernels' configs, which is exclusive (`autotune_exclusive`). The second, a plain run, holds
    the shared one.
    """
    import torch

    ref = state.get("reference")
    if ref is None:
        return {"status": "error", "error": "no reference loaded"}
    progress("baseline torch.compile")
    try:
        compiled = torch.compile(ref["model"])
        ref["autotune"] = []
        with torch.no_grad():
            with _gpu(state).hold("background"), autotune_exclusive(_gpu(state), record=ref["autotune"]):
                compiled(*ref["inputs"][0])
            with _gpu(state).hold("shared"):
                compiled(*ref["inputs"][0])
        ref["compiled"] = compiled
    except BaseException as exc:  # noqa: BLE001 - the eager baseline still stands
        ref["compile_error"] = describe(exc)
    return {"status": "ok"}


# Baselines are timed once per (task, GPU, dtype) and cached, so one disturbed measurement would
# skew every verdict of the task: on an H200 the same eager baseline read 0.52, 0.26 and 0.20 ms in
# three runs while candidates timed within 2 %. Each is timed this many times, spaced by
# BASELINE_GAP_S with the lock let go in between, and the least median kept: interference only
# ever slows a timing down.
BASELINE_REPEATS = 3
BASELINE_GAP_S = 0.05


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The timing with the least median, plus every run's median (``repeat_medians_ms``)."""
    if not runs:
        raise ValueError("best_of() needs at least one timing")
    best = dict(min(runs, key=lambda r: r["median_ms"]))
    best["repeat_medians_ms"] = [r["median_ms"] for r in runs]
    return best


def time_baselines(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Eager and torch.compile timings of the reference model (cached by the parent): each the best
    of ``msg["repeats"]`` (default `BASELINE_REPEATS`) separate timings, eager and compiled taking
    turns."""
    import time

    import torch

    from kernelgym.evaluation import timing

    ref = state.get("reference")
    if ref is None:
        return {"status": "error", "error": "no reference loaded"}
    model, inputs = ref["model"], [list(x) for x in ref["inputs"]]
    opts = dict(msg.get("bench", {}))
    repeats = max(1, int(msg.get("repeats", BASELINE_REPEATS)))
    compiled = ref.get("compiled")
    eager: list[dict[str, Any]] = []
    comp: list[dict[str, Any]] = []
    compile_error = None if compiled is not None else ref.get("compile_error", "torch.compile baseline not prepared")

    def timed(fn: Callable[..., Any]) -> dict[str, Any]:
        with torch.no_grad():
            return timing.bench(lambda ins: fn(*ins), inputs, stream=_stream(state), hold=_gpu(state).hold, **opts)

    for i in range(repeats):
        if i:
            time.sleep(BASELINE_GAP_S)   # the lock is let go: whatever disturbed the last one may end
        progress("baseline eager")
        try:
            eager.append(timed(model))
        except BaseException as exc:  # noqa: BLE001
            return {"status": "error", "error": f"eager baseline failed: {describe(exc)}"}
        if compile_error is not None:
            continue
        progress("baseline torch.compile timing")
        try:
            comp.append(timed(compiled))
        except BaseException as exc:  # noqa: BLE001 - the eager baseline still stands
            compile_error = describe(exc)
    out: dict[str, Any] = {"status": "ok", "eager": best_of(eager)}
    if comp:
        out["compile"] = best_of(comp)
        out["compile"]["autotune"] = list(ref.get("autotune", []))
    else:
        out["compile_error"] = compile_error
    return out


def end_reference(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    state.pop("reference", None)
    return {"status": "ended"}
