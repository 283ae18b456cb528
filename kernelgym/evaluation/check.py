"""Correctness comparison, run in the reference worker on outputs decoded from the workers.

torch is imported inside the functions, as everywhere a worker module can be imported without
running a job (see benchmarks/cold_eval.py). `TrialResult`, what the parent reads, is `protocol`'s."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from kernelgym.evaluation.jobs import read_scalars
from kernelgym.evaluation.protocol import TrialResult
from kernelgym.evaluation.tolerances import tolerance_for


def as_outputs(value: Any) -> list[Any]:
    """A forward's return value as a flat list (a tensor, or a tuple/list of them)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _fmt_shape(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)}"


def compare_trial(trial: int, seed: int, reference: list[Any], candidate: list[Any]) -> TrialResult:
    """Compare one trial's outputs: count, exact shape and dtype, NaN/Inf, then tolerance."""
    import torch

    res = TrialResult(trial=trial, seed=seed, ok=False)
    if len(candidate) != len(reference):
        res.reason, res.message = "check:output_count", (
            f"trial {trial}: candidate returned {len(candidate)} output(s), reference {len(reference)}")
        return res
    worst_abs, worst_rel = 0.0, 0.0
    for i, (ref, out) in enumerate(zip(reference, candidate)):
        where = f"trial {trial}, output {i}"
        if not isinstance(out, torch.Tensor):
            res.reason, res.message = "check:type", f"{where}: candidate returned {type(out).__name__}, not a tensor"
            return res
        if not isinstance(ref, torch.Tensor):
            ref = torch.as_tensor(ref)
        if out.shape != ref.shape:
            res.reason, res.message = "check:shape", (
                f"{where}: shape {_fmt_shape(out)} != expected {_fmt_shape(ref)}")
            return res
        if out.dtype != ref.dtype:
            res.reason, res.message = "check:dtype", f"{where}: dtype {out.dtype} != expected {ref.dtype}"
            return res
        tol = tolerance_for(ref.dtype)
        info: dict[str, Any] = {"shape": list(ref.shape), "dtype": str(ref.dtype).removeprefix("torch."), **tol}
        res.outputs.append(info)
        if ref.numel() == 0:
            continue
        if not (ref.is_floating_point() or ref.is_complex()):
            n_bad_f, max_abs = _exact_stats(ref, out)
            n_bad, worst_abs = int(n_bad_f), max(worst_abs, max_abs)
            if n_bad:
                res.reason, res.message, res.mismatched = "check:mismatch", (
                    f"{where}: {n_bad}/{ref.numel()} elements differ (exact match required for {ref.dtype})"), n_bad
                break
            continue
        n_nan, max_abs, max_rel, n_bad = _close_stats(ref, out, tol)
        n_nan, n_bad = int(n_nan), int(n_bad)
        if n_nan:
            res.reason, res.message, res.mismatched = "check:nan", (
                f"{where}: {n_nan}/{ref.numel()} elements are NaN/Inf where the reference is finite "
                "(unwritten or overflowed output)"), n_nan
            break
        worst_abs, worst_rel = max(worst_abs, max_abs), max(worst_rel, max_rel)
        info["max_abs_err"] = max_abs
        if n_bad:
            res.reason, res.message, res.mismatched = "check:mismatch", (
                f"{where}: {n_bad}/{ref.numel()} elements outside tolerance (atol={tol['atol']}, "
                f"rtol={tol['rtol']}); max abs error {worst_abs:.3g}"), n_bad
            break
    res.max_abs_err, res.max_rel_err = worst_abs, worst_rel
    res.ok = not res.reason
    return res


# Elements compared per step: the float64 temporaries of a comparison are about 40 bytes an
# element, so a whole 3.2 GiB output (a KernelBench ConvTranspose3d) once took 53 GiB of the
# reference worker's GPU memory at once (H100, session 14). Per slice they stay under 1 GiB.
COMPARE_SLICE = 1 << 24


def _slices(ref: Any, out: Any) -> Any:
    """Matching flat slices of two same-shape tensors, COMPARE_SLICE elements at a time."""
    r, o = ref.reshape(-1), out.reshape(-1)
    for i in range(0, r.numel(), COMPARE_SLICE):
        yield r[i:i + COMPARE_SLICE], o[i:i + COMPARE_SLICE]


def _exact_stats(ref: Any, out: Any) -> list[float]:
    """[elements that differ, max |out - ref|] of an integer or bool output, one host read."""
    import torch

    parts = []
    for r, o in _slices(ref, out):
        bad = o != r
        diff = bad.double() if r.dtype == torch.bool else (o.to(torch.float64) - r.to(torch.float64)).abs()
        parts.append(torch.stack([bad.sum().double(), diff.max().double()]))
    p = torch.stack(parts)
    return torch.stack([p[:, 0].sum(), p[:, 1].max()]).tolist()


def _close_stats(ref: Any, out: Any, tol: dict[str, float]) -> list[float]:
    """[NaN/Inf where the reference is finite, max abs error, max rel error, elements outside
    tolerance] of a floating or complex output, computed in float64 slice by slice and read back
    to the host once (every scalar read is a device sync, and syncs are slow on a busy GPU)."""
    import torch

    parts = []
    for r, o in _slices(ref, out):
        ref64 = r.to(torch.complex128 if r.is_complex() else torch.float64)
        out64 = o.to(ref64.dtype)
        ref_finite, out_finite = torch.isfinite(ref64), torch.isfinite(out64)
        fin = ref_finite & out_finite
        diff = (out64 - ref64).abs()
        abs_err = torch.where(fin, diff, 0.0)
        rel_err = torch.where(fin, diff / ref64.abs().clamp_min(1e-12), 0.0)
        close = torch.isclose(out64, ref64, rtol=tol["rtol"], atol=tol["atol"], equal_nan=False)
        parts.append(torch.stack([(ref_finite & ~out_finite).sum().double(), abs_err.max().double(),
                                  rel_err.max().double(), (~close).sum().double()]))
    p = torch.stack(parts)
    return torch.stack([p[:, 0].sum(), p[:, 1].max(), p[:, 2].max(), p[:, 3].sum()]).tolist()


def reference_problem(trials: list[list[Any]]) -> str | None:
    """Why a reference's outputs are unusable (not a tensor, NaN), or None if they are fine.

    `trials`: each trial's outputs. The NaN checks of all of them are read back at once.
    """
    import torch

    flags, where = [], []
    for t, outputs in enumerate(trials):
        for i, ref in enumerate(outputs):
            if not isinstance(ref, torch.Tensor):
                what = ref if isinstance(ref, str) else type(ref).__name__
                return f"trial {t}: reference output {i} is {what}, not a tensor"
            if ref.is_floating_point() or ref.is_complex():
                flags.append(torch.isnan(ref).any())
                where.append((t, i))
    for (t, i), nan in zip(where, read_scalars(flags)):
        if nan:
            return f"trial {t}: reference output {i} contains NaN"
    return None
