"""Per-kernel GPU times: a task's eager reference, its torch.compile and the compiler's kernels.

Where `search_gain` says a task loses, this says which kernel loses: each model runs `--forwards`
times under torch.profiler, every forward after an L2 flush (as `timing_fidelity` does), and a
kernel's time is the median over forwards of its summed durations in one forward. Models: "eager",
"compile" (skip with --no-compile) and one "cN" per compiler config (`--configs`, "{}" = the
default). Tasks are sampled ids (`d3_bench_s4`). Prints a table and writes JSON. GPU only.
Usage: python -m benchmarks.kernel_profile --tasks d3_bench_s4,d2_bench_s3 [--configs JSON]
       [--forwards 30] [--no-compile] [--out F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._output import write_json
from benchmarks.compiler_variants import parse_configs, parse_task_ids, sample_tasks

ROOT = Path(__file__).resolve().parents[1]


def breakdown(forwards: Sequence[Sequence[tuple[float, float, str]]]) -> dict[str, Any]:
    """Per-forward kernel records (start us, duration us, name) -> the median forward's total and,
    per kernel name (in first-launch order), its median summed duration a forward, in us."""
    if not forwards:
        raise ValueError("no forwards recorded")
    names: list[str] = []
    for fw in forwards:
        for _, _, name in fw:
            if name not in names:
                names.append(name)
    per = {name: statistics.median(sum(d for _, d, nm in fw if nm == name) for fw in forwards) for name in names}
    return {"total_us": statistics.median(sum(d for _, d, _ in fw) for fw in forwards),
            "span_us": statistics.median(fw[-1][0] + fw[-1][1] - fw[0][0] for fw in forwards if fw),
            "kernels": [{"name": name, "us": per[name]} for name in names]}


def _short(name: str, width: int = 70) -> str:
    return name if len(name) <= width else name[:width - 3] + "..."


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'task':<14}{'model':<9}{'kernel':<72}{'us':>9}{'share':>7}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['task_id']:<14}{r['model']:<9}ERROR {r['error'][:100]}")
            continue
        total = r["total_us"]
        lines.append(f"{r['task_id']:<14}{r['model']:<9}{'(all kernels; span ' + format(r['span_us'], '.1f') + ' us)':<72}"
                     f"{total:>9.1f}{'':>7}")
        for k in r["kernels"]:
            share = k["us"] / total if total else 0.0
            lines.append(f"{'':<14}{'':<9}{_short(k['name']):<72}{k['us']:>9.1f}{share:>7.0%}")
    return "\n".join(lines)


def _models(task: Any, init_inputs: list[Any], reference: Any, configs: list[dict[str, Any]],
            with_compile: bool) -> list[tuple[str, Any]]:
    """(label, zero-argument builder of a CUDA model) for every model profiled on `task`, whose
    reference model (on the GPU) was built from `init_inputs`."""
    import torch

    from kernelgym import task as taskmod
    from policies.compiler import CompilerPolicy

    policy = CompilerPolicy()
    out: list[tuple[str, Any]] = [("eager", lambda: reference)]
    if with_compile:
        out.append(("compile", lambda: torch.compile(reference)))
    tmp = Path(tempfile.mkdtemp(prefix="kernel_profile-"))
    for ci, cfg in enumerate(configs):
        def build(cfg: dict[str, Any] = cfg, ci: int = ci) -> Any:
            path = tmp / f"{task.id}_c{ci}.py"   # @triton.jit reads its source from a file
            path.write_text(policy.compile(task, config=cfg))
            mod = taskmod.exec_source(path.read_text(), f"profile_{task.id}_c{ci}", filename=str(path))
            model = mod.ModelNew(*init_inputs)
            model.load_state_dict(reference.state_dict(), strict=True)
            return model.cuda().eval()
        out.append((f"c{ci}", build))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", required=True, type=parse_task_ids,
                    help="comma-separated sampled task ids, e.g. d3_bench_s4")
    ap.add_argument("--configs", type=parse_configs, default=[{}], help="JSON list of compiler configs")
    ap.add_argument("--forwards", type=int, default=30, help="profiled forwards per model")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "kernel_profile.json"))
    args = ap.parse_args(argv)
    if args.forwards < 1:
        ap.error(f"--forwards must be at least 1, got {args.forwards}")

    from kernelgym.evaluation.evaluator import cuda_available

    if not cuda_available():
        print("kernel_profile needs a CUDA GPU; nothing to do here.")
        return 0
    import torch

    from benchmarks.timing_fidelity import profile_forwards
    from kernelgym.evaluation.jobs import seeded_task, to_device, trial_inputs
    from kernelgym.evaluation.reference import trial_seed

    rows: list[dict[str, Any]] = []
    for task in sample_tasks(args.tasks):
        module, init_inputs, reference = seeded_task(task.source, 0, f"profile_{task.id}")
        sets = [to_device(trial_inputs(module, trial_seed(0, t)), "cuda") for t in range(3)]
        models = _models(task, init_inputs, reference.cuda().eval(), args.configs, not args.no_compile)
        for label, build in models:
            row: dict[str, Any] = {"task_id": task.id, "ops": list(task.ops), "model": label}
            try:
                row |= breakdown(profile_forwards(build(), sets, args.forwards))
            except Exception as exc:  # noqa: BLE001 - one failing model must not hide the others
                row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            rows.append(row)
            print(table([row]), flush=True)
    print(f"\nper-kernel times on {torch.cuda.get_device_name(0)} (median of {args.forwards} forwards, L2 flushed)")
    for ci, cfg in enumerate(args.configs):
        print(f"  c{ci} = {json.dumps(cfg)}")
    print(table(rows))
    write_json(args.out, {"benchmark": "kernel_profile", "device": torch.cuda.get_device_name(0),
                          "versions": {"torch": torch.__version__}, "configs": args.configs,
                          "forwards": args.forwards, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
