"""The reference job, run in a REFERENCE worker (a process that never runs candidate code)."""

from __future__ import annotations

from typing import Any, Callable

from kernelgym.evaluation.jobs import clone_tree, describe, outputs_list, sync, to_device

SEED_MASK = (1 << 63) - 1


def trial_seed(seed: int, t: int) -> int:
    """Seed of trial `t` derived from the evaluation seed (stable across versions)."""
    return (seed * 6364136223846793005 + 1442695040888963407 * (t + 1)) & SEED_MASK


def run_reference(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Seeded: init inputs and weights from `seed`, then each trial's inputs and outputs."""
    import torch

    from kernelgym import task as taskmod
    from kernelgym.evaluation.guards.runtime import record_torch_ops

    state.pop("reference", None)
    device, seed, n = msg["device"], int(msg["seed"]), int(msg["trials"])
    progress("reference import")
    try:
        module = taskmod.exec_source(msg["source"], "kernelgym_reference", filename="<reference>")
        torch.manual_seed(seed)
        init_inputs = list(module.get_init_inputs())
        model = module.Model(*init_inputs)
        state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model = model.to(device).eval()
    except BaseException as exc:  # noqa: BLE001 - a broken reference is a verdict, not a worker crash
        return {"status": "error", "stage": "reference init", "error": describe(exc)}
    trials = []
    ops = None
    aliases = False
    for t in range(n):
        progress(f"reference trial {t}")
        ts = trial_seed(seed, t)
        try:
            torch.manual_seed(ts)
            inputs = list(module.get_inputs())
            sent = clone_tree(inputs)  # before forward: a reference may modify its inputs in place
            dev_inputs = to_device(inputs, device)
            with torch.no_grad():
                if t == 0 and msg.get("want_ops"):
                    out, counter = record_torch_ops(model, *dev_inputs)
                    ops = {str(k): int(v) for k, v in counter.items()}
                else:
                    out = model(*dev_inputs)
            sync(device)
            aliases = aliases or _shares_storage(out, dev_inputs)
        except BaseException as exc:  # noqa: BLE001
            return {"status": "error", "stage": f"reference trial {t}", "error": describe(exc)}
        trials.append({"seed": ts, "inputs": sent, "outputs": outputs_list(out)})
    state["reference"] = {"model": model, "inputs": [to_device(tr["inputs"], device) for tr in trials]}
    return {"status": "ok", "init_inputs": init_inputs, "state_dict": state_dict, "trials": trials, "ops": ops,
            "aliases_input": aliases}


def _shares_storage(out: Any, inputs: list[Any]) -> bool:
    """True if any output tensor shares storage with an input tensor (a view or the input itself)."""
    import torch

    def ptrs(xs: Any) -> set[int]:
        items = xs if isinstance(xs, (list, tuple)) else [xs]
        return {x.untyped_storage().data_ptr() for x in items
                if isinstance(x, torch.Tensor) and x.untyped_storage().nbytes() > 0}

    return bool(ptrs(out) & ptrs(inputs))


def prepare_baselines(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """torch.compile the reference and run it once (slow; done outside the exclusive timing lock)."""
    import torch

    ref = state.get("reference")
    if ref is None:
        return {"status": "error", "error": "no reference loaded"}
    progress("baseline torch.compile")
    try:
        compiled = torch.compile(ref["model"])
        with torch.no_grad():
            compiled(*ref["inputs"][0])
        torch.cuda.synchronize()
        ref["compiled"] = compiled
    except BaseException as exc:  # noqa: BLE001 - the eager baseline still stands
        ref["compile_error"] = describe(exc)
    return {"status": "ok"}


def time_baselines(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Eager and torch.compile timings of the reference model (cached by the parent)."""
    import torch

    from kernelgym.evaluation.timing import bench

    ref = state.get("reference")
    if ref is None:
        return {"status": "error", "error": "no reference loaded"}
    model, inputs = ref["model"], [list(x) for x in ref["inputs"]]
    out: dict[str, Any] = {"status": "ok"}
    progress("baseline eager")
    try:
        with torch.no_grad():
            out["eager"] = bench(lambda ins: model(*ins), inputs, **msg.get("bench", {}))
    except BaseException as exc:  # noqa: BLE001
        return {"status": "error", "error": f"eager baseline failed: {describe(exc)}"}
    compiled = ref.get("compiled")
    if compiled is None:
        out["compile_error"] = ref.get("compile_error", "torch.compile baseline not prepared")
        return out
    progress("baseline torch.compile timing")
    try:
        with torch.no_grad():
            out["compile"] = bench(lambda ins: compiled(*ins), inputs, **msg.get("bench", {}))
    except BaseException as exc:  # noqa: BLE001
        out["compile_error"] = describe(exc)
    return out


def end_reference(state: dict[str, Any], msg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    state.pop("reference", None)
    return {"status": "ended"}
