"""Shared memory of the compiler's tl.dot kernels: the estimate (`policies.smem`) against Triton's
own figure for sm_90, on KernelBench-format problem folders; no GPU needed.

Each problem is compiled with ``CompilerPolicy("strict")`` (launches fitted to `--budget`, or as
the templates and configs set them with `--no-fit`), then its `ModelNew` runs on the meta device
with every ``@triton.jit`` launch recorded instead of run (so full sizes cost nothing). Each
distinct launch of a kernel that calls ``tl.dot`` is compiled with ``triton.compile(...,
target=GPUTarget("cuda", 90, 32))`` with the launch's signature, constexprs, num_warps and
num_stages, pointers marked 16-byte aligned as a real launch specialises them;
``metadata.shared`` is the shared memory that launch needs. Prints one row per launch (tiles,
stages, estimate, Triton's bytes, their ratio) and a summary: launches over the H100/H200 limit
(232448 bytes), over the budget, and where the estimate falls short of Triton's figure.

Problems run one at a time, each in a forked child killed past `--timeout` seconds. Usage:
    python -m benchmarks.dot_smem DIR [DIR ...] [--filter REGEX] [--limit N] [--timeout 300]
        [--budget BYTES] [--no-fit] [--json out.json]
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._children import in_children
from benchmarks._output import write_json

# Shared memory one block may use on an H100 / H200 (cudaDevAttrMaxSharedMemoryPerBlockOptin).
HW_LIMIT = 232448
_PTR = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16", "float64": "*fp64", "int64": "*i64",
        "int32": "*i32", "int16": "*i16", "int8": "*i8", "uint8": "*u8", "bool": "*i1"}


def record_launches(task: Any, source: str) -> list[dict[str, Any]]:
    """Run `source`'s ModelNew on the meta device with the task's inputs, recording each
    ``kernel[grid](...)`` launch (kernel, signature, constexprs, attrs, num_warps, num_stages,
    the programs its grid asks for) instead of running it."""
    import torch

    from kernelgym.evaluation.ptx import find_jit_functions

    ref: dict[str, Any] = {"__name__": "kb_reference"}
    exec(compile(task.source, f"<{task.id}>", "exec"), ref)  # noqa: S102 - the user's own problem file
    import importlib.util
    import tempfile

    # @triton.jit reads its function's source file: the module must come from a real file
    with tempfile.TemporaryDirectory(prefix="dot_smem_") as tmp:
        path = Path(tmp) / "kb_candidate.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("kb_candidate", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    mod = module.__dict__
    launches: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, fn: Any):
            self.fn = fn

        def __getitem__(self, grid: Any) -> Callable[..., None]:
            def launch(*args: Any, **kwargs: Any) -> None:
                launches.append({**_describe_launch(self.fn, args, kwargs), "programs": _programs_of(grid, kwargs)})
            return launch

    jitted = {name: fn for name, fn in find_jit_functions(mod).items() if name in mod}
    mod.update({name: Recorder(fn) for name, fn in jitted.items()})
    try:
        with torch.device("meta"), torch.no_grad():
            model = mod["ModelNew"](*ref["get_init_inputs"]())
            model(*ref["get_inputs"]())
    finally:
        mod.update(jitted)   # kernels calling jit helpers (_tanh...) compile against the real ones
    return launches


def _programs_of(grid: Any, meta: dict[str, Any]) -> int | None:
    """Programs a launch's grid (a tuple, or a callable of the launch's keywords) asks for."""
    try:
        dims = grid(meta) if callable(grid) else grid
        n = 1
        for d in dims:
            n *= int(d)
        return n
    except Exception:  # noqa: BLE001 - a grid of another form: not counted
        return None


def _describe_launch(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    import torch

    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    bound = dict(zip([p.name for p in fn.params], args)) | kwargs
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    for i, p in enumerate(fn.params):
        if p.name not in bound:
            if p.is_constexpr and p.has_default:
                signature[p.name], constexprs[p.name] = "constexpr", p.default
            continue
        v = bound[p.name]
        if p.is_constexpr or v is None:
            signature[p.name], constexprs[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[p.name] = _PTR[str(v.dtype).removeprefix("torch.")]
            attrs[(i,)] = [["tt.divisibility", 16]]   # torch allocations are aligned; launches specialise it
        elif type(v).__name__ == "TensorDescriptor":   # a TMA operand (config tma), typed as Triton does
            from kernelgym.evaluation.guards.runtime.launches import _descriptor_type

            signature[p.name] = _descriptor_type(v)
        elif isinstance(v, bool):
            signature[p.name] = "i1"
        elif isinstance(v, int):
            signature[p.name] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[p.name] = "fp32"
    return {"kernel": fn.__name__, "fn": fn, "signature": signature, "constexprs": constexprs, "attrs": attrs,
            "num_warps": int(options.get("num_warps", 4)), "num_stages": int(options.get("num_stages", 3))}


def compile_sm90(launch: dict[str, Any]) -> Any:
    """`launch` (a `record_launches` entry) compiled for sm_90: Triton's compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget

    src = triton.compiler.ASTSource(fn=launch["fn"], signature=launch["signature"],
                                    constexprs=launch["constexprs"], attrs=launch["attrs"])
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": launch["num_warps"], "num_stages": launch["num_stages"]})


def compile_shared(launch: dict[str, Any]) -> int:
    """Triton's shared memory (bytes) for `launch` compiled for sm_90."""
    return int(compile_sm90(launch).metadata.shared)


def distinct_launches(launches: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, int]]]:
    """Each launch of a distinct compilation (kernel, signature, integer constexprs, warps,
    stages) once, with its integer constexprs."""
    seen: set[str] = set()
    for launch in launches:
        consts = {k: int(v) for k, v in launch["constexprs"].items() if isinstance(v, (int, bool))}
        key = repr((launch["kernel"], sorted(launch["signature"].items()), sorted(consts.items()),
                    launch["num_warps"], launch["num_stages"]))
        if key not in seen:
            seen.add(key)
            yield launch, consts


def problem_rows(path: str, budget: int | None) -> dict[str, Any]:
    """One problem: compile, record its launches, and per distinct tl.dot launch the estimate and
    Triton's figure."""
    import warnings

    from kernelgym.pyast import parse
    from kernelgym.task import Task
    from policies.compiler import CompilerPolicy
    from policies.smem import estimate_function, has_dot, jit_functions

    warnings.simplefilter("ignore")
    task = Task.from_file(path)
    policy = CompilerPolicy("strict", smem_budget=budget)
    try:
        source = policy.compile(task)
    except Exception as exc:  # noqa: BLE001 - a problem the compiler cannot do is a result here
        return {"problem": Path(path).stem, "error": f"compile: {type(exc).__name__}: {exc}"[:300]}
    element_bytes = 2 if re.search(r"^DTYPE = torch\.(float16|bfloat16)$", source, re.M) else 4
    fns = {name: f for name, f in jit_functions(parse(source)).items() if has_dot(f)}
    rows: list[dict[str, Any]] = []
    dot_launches = [la for la in record_launches(task, source) if la["kernel"] in fns]
    for launch, consts in distinct_launches(dot_launches):
        fn_ast = fns[launch["kernel"]]
        est = estimate_function(fn_ast, consts, launch["num_stages"], element_bytes)
        row: dict[str, Any] = {"problem": Path(path).stem, "kernel": launch["kernel"],
                               "blocks": {k: v for k, v in consts.items() if k.startswith(("BLOCK", "SPLIT"))},
                               "num_warps": launch["num_warps"], "num_stages": launch["num_stages"],
                               "estimate": est.bytes if est else None, "unknown": est.unknown if est else None,
                               "fitted": "launch fitted to shared memory" in (ast.get_docstring(fn_ast) or "")}
        t0 = time.perf_counter()
        try:
            row["shared"] = compile_shared(launch)
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"sm_90 compile: {type(exc).__name__}: {exc}"[:300]
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    return {"problem": Path(path).stem, "rows": rows}


def _job(path: str, budget: int | None) -> Callable[[], dict[str, Any]]:
    def job() -> dict[str, Any]:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)   # problem code that prints must not interleave with the table
        return problem_rows(path, budget)
    return job


def problem_results(paths: list[str], timeout: float, job_of: Callable[[str], Callable[[], dict[str, Any]]],
                    failed: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
    """Each problem's result (a dict with ``rows``) from `job_of(path)` run in a forked child
    killed past `timeout` seconds, one problem at a time; a problem without rows goes to `failed`
    as (name, error)."""
    for path in paths:
        got = in_children([job_of(path)], timeout, 1)[0]
        if "rows" not in got:
            failed.append((Path(path).stem, got.get("error", "no result")))
            continue
        yield got


def problem_paths(dirs: list[str], filt: str | None, limit: int | None) -> list[str]:
    out: list[str] = []
    rx = re.compile(filt) if filt else None
    for d in dirs:
        folder = Path(d)
        if not folder.is_dir():
            # shared by registers and conv_layout: the message names the folder, not this script
            raise SystemExit(f"{d!r} is not a folder (of KernelBench-format problems)")
        files = sorted((p for p in folder.glob("*.py") if p.name != "__init__.py"),
                       key=lambda p: (int(m[1]) if (m := re.match(r"(\d+)_", p.name)) else 1 << 30, p.name))
        files = [p for p in files if rx is None or rx.search(p.name)]
        out += [str(p) for p in (files[:limit] if limit else files)]
    return out


def main() -> int:
    from policies.smem import SMEM_BUDGET

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="folders of KernelBench-format problems (e.g. KernelBench/level2)")
    ap.add_argument("--filter", default=None, help="regex on the file names to keep")
    ap.add_argument("--limit", type=int, default=None, help="first N problems of each folder")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per problem")
    ap.add_argument("--budget", type=int, default=SMEM_BUDGET, help="the compiler's shared memory budget (bytes)")
    ap.add_argument("--no-fit", action="store_true", help="compile without fitting launches to the budget")
    ap.add_argument("--json", default=None, help="write every launch's row here")
    args = ap.parse_args()
    import policies.compiler  # noqa: F401 - imported once here, not in every forked child

    budget = None if args.no_fit else args.budget
    rows: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    print(f"{'problem':44s} {'kernel':34s} {'BM':>4s} {'BN':>4s} {'BK':>4s} {'w':>2s} {'st':>2s} "
          f"{'estimate':>9s} {'triton':>9s} {'est/tri':>7s}", flush=True)
    t0 = time.perf_counter()
    for got in problem_results(problem_paths(args.dirs, args.filter, args.limit), args.timeout,
                               lambda path: _job(path, budget), failed):
        for r in got["rows"]:
            rows.append(r)
            b = r["blocks"]
            tri = r.get("shared")
            ratio = f"{r['estimate'] / tri:7.2f}" if tri and r["estimate"] is not None else "      -"
            print(f"{r['problem'][:44]:44s} {r['kernel'][:34]:34s} {b.get('BLOCK_M', '-'):>4} {b.get('BLOCK_N', '-'):>4} "
                  f"{b.get('BLOCK_K', '-'):>4} {r['num_warps']:>2} {r['num_stages']:>2} {r['estimate'] or 0:9d} "
                  f"{tri if tri is not None else r.get('error', '?')[:40]!s:>9} {ratio}", flush=True)
    measured = [r for r in rows if r.get("shared") is not None and r["estimate"] is not None]
    over_hw = [r for r in measured if r["shared"] > HW_LIMIT]
    short = [r for r in measured if r["estimate"] < r["shared"]]
    print(f"\n{len(measured)} tl.dot launches measured ({len(rows) - len(measured)} not compiled), "
          f"{len(failed)} problems not compiled/recorded; {time.perf_counter() - t0:.0f} s")
    if measured:
        top = max(measured, key=lambda r: r["shared"])
        print(f"max Triton shared memory {top['shared']} bytes ({top['problem']} {top['kernel']}); "
              f"max estimate {max(r['estimate'] for r in measured)}")
        print(f"over the H100/H200 limit ({HW_LIMIT}): {len(over_hw)}; estimate over the budget "
              f"({args.budget}): {sum(r['estimate'] > args.budget for r in measured)}")
        ratios = sorted(r["estimate"] / r["shared"] for r in measured if r["shared"])
        if ratios:
            print(f"estimate / Triton: min {ratios[0]:.2f}, median {ratios[len(ratios) // 2]:.2f}, max {ratios[-1]:.2f}; "
                  f"estimate below Triton's figure for {len(short)} launch(es)"
                  + (f", worst by {max(r['shared'] - r['estimate'] for r in short)} bytes" if short else ""))
    fitted = [r for r in rows if r.get("fitted")]
    if fitted:
        print(f"launches the compiler fitted to the budget: {len(fitted)} in {len({r['problem'] for r in fitted})} "
              f"problem(s)")
    unknown = [r for r in measured if r.get("unknown")]
    if unknown:
        print(f"launches with loads or products of a shape the estimate could not tell: {len(unknown)} "
              f"({', '.join(sorted({r['problem'] for r in unknown})[:5])})")
    for name, err in failed:
        print(f"  not measured: {name}: {err[:160]}")
    if args.json:
        write_json(args.json, {"rows": rows, "failed": failed})
    return 1 if over_hw else 0


if __name__ == "__main__":
    sys.exit(main())
