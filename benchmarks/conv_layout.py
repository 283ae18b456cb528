"""cuDNN's convolutions of KernelBench problems in NCHW against channels-last (GPU).

Lenient mode runs each convolution as the vendor call on NCHW (contiguous) tensors, the layout the
compiler's kernels read. torch.compile's Inductor may convert convolutions to channels-last
(its layout optimisation), and cuDNN's tensor-core kernels work in NHWC. Before teaching the
compiler a second layout, this measures what it would buy: for every convolution of each problem
(shapes and parameters from the compiler's traced program, so KernelBench's own sizes), the
vendor call's time on NCHW operands, on channels-last ones, and the conversion of the input to
channels-last (a pass over it a layout change would cost unless its producer wrote it so).
Timings with `triton.testing.do_bench` (median ms), the weight and bias as the reference holds them,
TF32 as torch's defaults allow it. Prints a row per convolution and the geomean ratio.

Usage: python -m benchmarks.conv_layout DIR [DIR ...] [--filter REGEX] [--limit N] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from benchmarks._output import write_json
from benchmarks.dot_smem import problem_paths


def conv_calls(path: str) -> list[dict[str, Any]]:
    """Every convolution of the problem at `path` that can be a vendor call: its op, input and
    weight shapes, and the call's keywords (`extern.conv_keywords`, as lenient mode writes them)."""
    from kernelgym.task import Task
    from policies.compiler import CompilerPolicy
    from policies.compiler.extern import CONV_FNS, conv_keywords

    prog = CompilerPolicy("lenient").program(Task.from_file(path))
    out = []
    for j, node in enumerate(prog.graph.nodes):
        roles = prog.weights.get(j, {})
        kw = conv_keywords(prog, j) if node.op in CONV_FNS else None
        if kw is None or "weight" not in roles:
            continue
        out.append({"node": j, "op": node.op, "x": tuple(prog.shape(node.args[0])),
                    "w": tuple(prog.state_by_key[roles["weight"]].shape), "bias": "bias" in roles, "kw": kw})
    return out


def time_call(call: dict[str, Any]) -> dict[str, Any]:
    """The convolution's median ms on NCHW and channels-last operands, and the input's conversion."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from triton.testing import do_bench

    from policies.compiler.layout import FORMATS  # torch has no channels-last format for 3-D tensors

    if len(call["x"]) not in FORMATS:
        return {"skipped": f"no channels-last format for a {len(call['x'])}-D input"}
    fmt = getattr(torch, FORMATS[len(call["x"])].removeprefix("torch."))
    fn = getattr(F, call["op"])
    x = torch.randn(call["x"], device="cuda")
    w = torch.randn(call["w"], device="cuda") * 0.05
    b = torch.randn(call["w"][1 if call["op"].startswith("conv_transpose") else 0], device="cuda") \
        if call["bias"] else None
    x_cl, w_cl = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
    nchw = do_bench(lambda: fn(x, w, b, **call["kw"]), return_mode="median")
    cl = do_bench(lambda: fn(x_cl, w_cl, b, **call["kw"]), return_mode="median")
    convert = do_bench(lambda: x.contiguous(memory_format=fmt), return_mode="median")
    same = torch.allclose(fn(x, w, b, **call["kw"]), fn(x_cl, w_cl, b, **call["kw"]), atol=1e-2, rtol=1e-2)
    return {"nchw_ms": nchw, "channels_last_ms": cl, "convert_ms": convert, "same": bool(same)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="folders of KernelBench-format problems (e.g. KernelBench/level2)")
    ap.add_argument("--filter", default=None, help="regex on the file names to keep")
    ap.add_argument("--limit", type=int, default=None, help="first N problems of each folder")
    ap.add_argument("--json", default=None, help="write every row and the summary here")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("conv_layout: needs a CUDA GPU", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    print(f"{'problem':48s} {'op':16s} {'NCHW ms':>8s} {'NHWC ms':>8s} {'conv. ms':>8s} {'ratio':>6s}", flush=True)
    for path in problem_paths(args.dirs, args.filter, args.limit):
        name = path.rsplit("/", 1)[-1].removesuffix(".py")
        try:
            calls = conv_calls(path)
        except Exception as exc:  # noqa: BLE001 - a problem the tracer refuses is a row here
            rows.append({"problem": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        for call in calls:
            try:
                got = time_call(call)
            except Exception as exc:  # noqa: BLE001 - out of memory, an unsupported call
                got = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            torch.cuda.empty_cache()   # the next problem's tensors may be as large
            row = {"problem": name, "node": call["node"], "op": call["op"], "x": call["x"], "w": call["w"], **got}
            rows.append(row)
            if "nchw_ms" in got:
                ratio = got["nchw_ms"] / got["channels_last_ms"]
                print(f"{name[:48]:48s} {call['op']:16s} {got['nchw_ms']:8.3f} {got['channels_last_ms']:8.3f} "
                      f"{got['convert_ms']:8.3f} {ratio:6.2f}{'' if got['same'] else '  MISMATCH'}", flush=True)
            else:
                print(f"{name[:48]:48s} {call['op']:16s} {got.get('skipped') or got.get('error')}", flush=True)
    timed = [r for r in rows if "nchw_ms" in r]
    summary = {"convolutions": len(timed),
               "geomean_nchw_over_channels_last": math.exp(sum(math.log(r["nchw_ms"] / r["channels_last_ms"])
                                                               for r in timed) / len(timed)) if timed else None,
               "faster_channels_last": sum(r["channels_last_ms"] < r["nchw_ms"] for r in timed),
               "faster_with_conversion": sum(r["channels_last_ms"] + r["convert_ms"] < r["nchw_ms"] for r in timed),
               "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "seconds": round(time.perf_counter() - t0, 1)}
    print(f"\n{summary}")
    if args.json:
        write_json(args.json, {"rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
