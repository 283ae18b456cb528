"""Registers and spills of the compiler's kernels for sm_90, on KernelBench-format problem folders;
no GPU needed.

Each problem is compiled with ``CompilerPolicy(--mode)``; its `ModelNew` runs on the meta device
with every ``@triton.jit`` launch recorded instead of run (`dot_smem.record_launches`), and each
distinct launch is compiled with ``triton.compile(..., target=GPUTarget("cuda", 90, 32))``. Its PTX
goes through the ptxas Triton uses for that target (``ptxas -v``), which reports the registers a
thread uses and the bytes it spills to local memory. A spilling kernel reads and writes local
memory in its loop or epilogue: on KernelBench level 2 this found Gemm + BatchNorm epilogues
spilling about 1 KB a thread, and nested pool windows 11 KB (benchmarks/NOTES.md, session 16).
Prints one row per launch (with the programs its grid asks for) and a summary: launches spilling,
at the 255-register cap, and with fewer programs than an H100 has SMs.

Problems run one at a time, each in a forked child killed past `--timeout` seconds. Usage:
    python -m benchmarks.registers DIR [DIR ...] [--mode strict|lenient] [--filter REGEX]
        [--limit N] [--timeout 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._output import write_json
from benchmarks.dot_smem import (
    compile_sm90,
    distinct_launches,
    problem_paths,
    problem_results,
    record_launches,
)

MAX_REGISTERS = 255   # per thread on sm_90: a kernel at the cap has likely been squeezed into it
# Programs under one per SM of an H100 (132): a launch with fewer leaves SMs idle whatever its
# registers (KernelBench level 1's LayerNorm: 16 rows of 4M elements, one program a row).
FEW_PROGRAMS = 132


def ptxas_report(ptx: str) -> dict[str, int]:
    """Registers, spill store / load bytes and stack frame of the one kernel in `ptx`, from the
    ptxas Triton bundles for sm_90 (``-v``)."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path
    with tempfile.TemporaryDirectory(prefix="registers_") as tmp:
        path = os.path.join(tmp, "k.ptx")
        Path(path).write_text(ptx)
        out = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed: {text.strip()[:300]}")
    got = {"registers": r"Used (\d+) registers", "spill_stores": r"(\d+) bytes spill stores",
           "spill_loads": r"(\d+) bytes spill loads", "stack": r"(\d+) bytes stack frame"}
    return {k: int(m[1]) if (m := re.search(rx, text)) else 0 for k, rx in got.items()}


def launch_report(launch: dict[str, Any]) -> dict[str, int]:
    """`ptxas_report` of one recorded launch compiled for sm_90 (with Triton's shared memory)."""
    kernel = compile_sm90(launch)
    return {**ptxas_report(kernel.asm["ptx"]), "shared": int(kernel.metadata.shared)}


def problem_rows(path: str, mode: str) -> dict[str, Any]:
    """One problem: compile it, record its launches and report each distinct one."""
    import warnings

    from kernelgym.task import Task
    from policies.compiler import CompilerPolicy

    warnings.simplefilter("ignore")
    task = Task.from_file(path)
    try:
        source = CompilerPolicy(mode).compile(task)
    except Exception as exc:  # noqa: BLE001 - a problem the compiler cannot do is a result here
        return {"problem": Path(path).stem, "error": f"compile: {type(exc).__name__}: {exc}"[:300]}
    rows: list[dict[str, Any]] = []
    for launch, consts in distinct_launches(record_launches(task, source)):
        row: dict[str, Any] = {"problem": Path(path).stem, "kernel": launch["kernel"],
                               "blocks": {k: v for k, v in consts.items() if k.isupper()},
                               "num_warps": launch["num_warps"], "num_stages": launch["num_stages"],
                               "programs": launch.get("programs")}
        try:
            row.update(launch_report(launch))
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"sm_90 compile: {type(exc).__name__}: {exc}"[:300]
        rows.append(row)
    return {"problem": Path(path).stem, "rows": rows}


def _job(path: str, mode: str) -> Callable[[], dict[str, Any]]:
    def job() -> dict[str, Any]:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)   # problem code that prints must not interleave with the table
        return problem_rows(path, mode)
    return job


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Launches compiled, spilling (and their bytes), at the register cap; the worst spiller."""
    ok = [r for r in rows if "registers" in r]
    spilling = [r for r in ok if r["spill_stores"] > 0]
    worst = max(spilling, key=lambda r: r["spill_stores"], default=None)
    return {"launches": len(ok), "not_compiled": len(rows) - len(ok), "spilling": len(spilling),
            "spill_bytes": sum(r["spill_stores"] for r in spilling),
            "at_cap": sum(r["registers"] >= MAX_REGISTERS - 1 for r in ok),
            "few_programs": sorted(f"{r['problem']} {r['kernel']} ({r['programs']})" for r in rows
                                   if r.get("programs") is not None and r["programs"] < FEW_PROGRAMS),
            "worst": f"{worst['problem']} {worst['kernel']} ({worst['spill_stores']} bytes)" if worst else None,
            "spilling_problems": sorted({r["problem"] for r in spilling})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="folders of KernelBench-format problems (e.g. KernelBench/level2)")
    ap.add_argument("--mode", choices=["strict", "lenient"], default="strict")
    ap.add_argument("--filter", default=None, help="regex on the file names to keep")
    ap.add_argument("--limit", type=int, default=None, help="first N problems of each folder")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per problem")
    ap.add_argument("--json", default=None, help="write every launch's row and the summary here")
    args = ap.parse_args()
    import policies.compiler  # noqa: F401 - imported once here, not in every forked child

    rows: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    print(f"{'problem':44s} {'kernel':34s} {'programs':>8s} {'w':>2s} {'st':>2s} {'regs':>4s} {'spill B':>7s} "
          f"{'shared':>7s}", flush=True)
    t0 = time.perf_counter()
    for got in problem_results(problem_paths(args.dirs, args.filter, args.limit), args.timeout,
                               lambda path: _job(path, args.mode), failed):
        for r in got["rows"]:
            rows.append(r)
            figures = (f"{r['registers']:>4} {r['spill_stores']:>7} {r['shared']:>7}" if "registers" in r
                       else r.get("error", "?")[:60])
            print(f"{r['problem'][:44]:44s} {r['kernel'][:34]:34s} {r['programs'] or '?':>8} {r['num_warps']:>2} "
                  f"{r['num_stages']:>2} {figures}", flush=True)
    s = summary(rows)
    print(f"\n{s['launches']} launches compiled for sm_90 ({s['not_compiled']} not), {len(failed)} problems not "
          f"compiled/recorded; {time.perf_counter() - t0:.0f} s")
    print(f"spilling: {s['spilling']} launches, {s['spill_bytes']} bytes in all; worst {s['worst']}; "
          f"at the {MAX_REGISTERS}-register cap: {s['at_cap']}")
    if s["spilling_problems"]:
        print("problems with a spilling launch: " + ", ".join(s["spilling_problems"]))
    if s["few_programs"]:
        print(f"launches of fewer than {FEW_PROGRAMS} programs: " + ", ".join(s["few_programs"]))
    for name, err in failed:
        print(f"  not measured: {name}: {err[:160]}")
    if args.json:
        write_json(args.json, {"rows": rows, "failed": failed, "summary": s})
    return 0


if __name__ == "__main__":
    sys.exit(main())
