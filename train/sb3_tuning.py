"""PPO (stable-baselines3) choosing launch configurations per task on `DiscreteChoiceEnv`.

    python -m train.sb3_tuning [--backend auto|cuda|interpret] [--steps 6000] [--tasks 8] [--k 6]
                               [--provider auto|compiler|relu] [--default 0] [--out result.json]

A provider offers K candidate programs per task (the compiler policy's K proposals when
`policies.compiler` exists, else K launch configurations -- block size and warps -- of a Triton ReLU
for sampled ReLU tasks); the action picks one and the real evaluator judges it (the env caches each
(task, candidate) verdict, so each pair is compiled, checked and timed once). The reward is the
decoupled one: correctness plus the clipped log2 speedup when timed. After training, the policy's
deterministic choice on every task is compared with a fixed default choice and with the best of the
K in hindsight: on a GPU (`--backend cuda`) the table shows each one's speedup over eager and the
geometric means of chosen / default and best / default.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import kernelgym  # noqa: F401  (registers the env ids)
from kernelgym.envs.discrete import DiscreteChoiceEnv
from kernelgym.evaluation import Evaluator, resolve_backend
from kernelgym.evaluation.protocol import BACKENDS
from kernelgym.examples import unary_candidate
from kernelgym.sampler import TaskSampler
from kernelgym.task import Task

# (BLOCK, num_warps): small blocks launch many programs (slow on large tensors), huge ones waste lanes.
RELU_CONFIGS = ((32, 1), (128, 4), (256, 4), (1024, 4), (2048, 8), (4096, 8), (64, 2), (512, 4))

Provider = Callable[[Task], list[str]]


def relu_provider(k: int) -> Provider:
    """K launch configurations of a Triton ReLU (for sampled `relu` tasks)."""
    if not 1 <= k <= len(RELU_CONFIGS):
        raise ValueError(f"k must be in 1..{len(RELU_CONFIGS)} for the relu provider")
    sources = [unary_candidate(name="relu_kernel", block=b, warps=w) for b, w in RELU_CONFIGS[:k]]
    return lambda task: list(sources)


def compiler_provider(k: int) -> Provider:
    """The compiler policy's k proposals for each task."""
    from policies.compiler import CompilerPolicy

    policy = CompilerPolicy()
    cache: dict[str, list[str]] = {}

    def provide(task: Task) -> list[str]:
        # The compiler is deterministic: compile each task's K candidates once, not at every reset
        # (recompiling was most of an env step's cost).
        if task.hash not in cache:
            try:
                cache[task.hash] = list(policy.propose(task, k))
            except Exception:  # noqa: BLE001 - no lowering for an op: every choice is an empty program
                cache[task.hash] = []
        return list(cache[task.hash])

    return provide


def make_provider(name: str, k: int) -> tuple[Provider, list[str] | None]:
    """(provider, ops the sampled tasks must use): auto = compiler when importable, else relu."""
    if name in ("auto", "compiler"):
        try:
            return compiler_provider(k), None
        except ImportError:
            if name == "compiler":
                raise
    if name in ("auto", "relu"):
        return relu_provider(k), ["relu"]
    raise ValueError(f"unknown provider {name!r}: auto, compiler or relu")


def write_suite(directory: Path, n: int, difficulty: int, sizes: str, seed: int, ops: list[str] | None) -> list[Task]:
    sampler = TaskSampler(sizes)
    tasks = [sampler.sample(difficulty, seed + i, ops) for i in range(n)]
    for t in tasks:
        t.write(directory)
    return tasks


def compare(env: DiscreteChoiceEnv, model: Any, tasks: Sequence[Task], default: int) -> list[dict[str, Any]]:
    """Per task: the policy's deterministic choice vs `default` and vs the best choice in hindsight
    (the highest reward among all k), with rewards and speedups (the env's verdict cache makes
    choices judged during training or by `prefetch` a lookup)."""
    rows = []
    for task in tasks:
        obs, _ = env.reset(options={"task": task})
        action = int(model.predict(obs, deterministic=True)[0])
        judged = []
        for a in range(env.k):
            env.reset(options={"task": task})
            _, reward, *_ = env.step(a)
            judged.append((float(reward), env.base.last_verdict))
        best = max(range(env.k), key=lambda a: (judged[a][0], -a))
        row: dict[str, Any] = {"task": task.id, "chosen": action, "default": default, "best": best}
        for who, a in (("chosen", action), ("default", default), ("best", best)):
            reward, verdict = judged[a]
            row.update({f"reward_{who}": reward, f"status_{who}": verdict["status"],
                        f"speedup_{who}": verdict.get("speedup")})
        rows.append(row)
    return rows


def tune(*, backend: str = "auto", steps: int = 6000, n_tasks: int = 8, k: int = 6, difficulty: int = 1,
         sizes: str | None = None, provider: Provider | None = None, provider_name: str = "auto",
         ops: list[str] | None = None, default: int = 0, seed: int = 0, evaluator: Evaluator | None = None,
         n_steps: int = 64) -> dict[str, Any]:
    """Train PPO on `n_tasks` sampled tasks for `steps` env steps; return the comparison summary."""
    from stable_baselines3 import PPO

    backend = resolve_backend(backend)
    sizes = sizes or ("bench" if backend == "cuda" else "tiny")
    if provider is None:
        provider, ops = make_provider(provider_name, k)
    if not 0 <= default < k:
        raise ValueError(f"default must be in [0, {k})")
    own = evaluator is None
    ev = evaluator or Evaluator(timeout=300)
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="kg_sb3_") as tmp:
            tasks = write_suite(Path(tmp), n_tasks, difficulty, sizes, seed, ops)
            inner = gym.make("KernelGym/Suite-v0", path=tmp, shuffle=True, backend=backend, evaluator=ev)
            env = DiscreteChoiceEnv(inner, provider, k=k)
            env.reset(seed=seed)
            # All K x tasks pairs judged up front in parallel; PPO's steps then read the cache.
            t1 = time.perf_counter()
            judged = env.prefetch(tasks, seed=seed)
            print(f"judged {judged} (task, candidate) pairs in {time.perf_counter() - t1:.1f} s; training PPO "
                  f"for {steps} steps", file=sys.stderr, flush=True)
            model = PPO("MlpPolicy", env, n_steps=n_steps, batch_size=min(32, n_steps), n_epochs=4, seed=seed,
                        device="cpu", verbose=0)
            # A 64-unit MLP gains nothing from threads, and on a GPU host they contend with the
            # evaluator's workers.
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                model.learn(total_timesteps=steps)
            finally:
                torch.set_num_threads(threads)
            rows = compare(env, model, tasks, default)
            evaluations = env.evaluations
    finally:
        if own:
            ev.close()

    def geomean_over_default(who: str) -> float | None:
        ratios = [r[f"speedup_{who}"] / r["speedup_default"] for r in rows
                  if r[f"speedup_{who}"] and r["speedup_default"]]
        return float(math.exp(np.mean(np.log(ratios)))) if ratios else None

    return {"backend": backend, "sizes": sizes, "steps": steps, "tasks": n_tasks, "k": k, "default": default,
            "evaluations": evaluations, "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
            "mean_reward_chosen": float(np.mean([r["reward_chosen"] for r in rows])),
            "mean_reward_default": float(np.mean([r["reward_default"] for r in rows])),
            "mean_reward_best": float(np.mean([r["reward_best"] for r in rows])),
            "geomean_chosen_over_default": geomean_over_default("chosen"),
            "geomean_best_over_default": geomean_over_default("best")}


def print_table(summary: dict[str, Any]) -> None:
    def f(x: Any) -> str:
        return f"{x:.2f}x" if isinstance(x, (int, float)) else "-"

    who = ("chosen", "default", "best")
    print(f"{'task':<22} " + " ".join(f"{w:>7} {'speedup':>9} {'status':<14}" for w in who))
    for r in summary["rows"]:
        print(f"{r['task']:<22} " + " ".join(f"{r[w]:>7} {f(r[f'speedup_{w}']):>9} {r[f'status_{w}']:<14}"
                                             for w in who))
    g, b = summary["geomean_chosen_over_default"], summary["geomean_best_over_default"]
    print(f"mean reward: chosen {summary['mean_reward_chosen']:.3f}, default {summary['mean_reward_default']:.3f}, "
          f"best {summary['mean_reward_best']:.3f}; speedup over the default (geomean): chosen "
          f"{f(g) if g is not None else 'n/a (untimed backend)'}, best {f(b) if b is not None else 'n/a'}; "
          f"{summary['evaluations']} evaluations, {summary['seconds']}s")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.sb3_tuning", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--steps", type=int, default=6000,
                   help="PPO environment steps (per-task choices took about 1000 a task on a CPU test)")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--k", type=int, default=6, help="candidates per task")
    p.add_argument("--difficulty", type=int, default=1)
    p.add_argument("--sizes", choices=["tiny", "bench"], help="default: bench on cuda, tiny otherwise")
    p.add_argument("--provider", default="auto", choices=["auto", "compiler", "relu"])
    p.add_argument("--default", type=int, default=0, help="the fixed choice to compare with")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the summary as JSON here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        summary = tune(backend=args.backend, steps=args.steps, n_tasks=args.tasks, k=args.k, difficulty=args.difficulty,
                       sizes=args.sizes, provider_name=args.provider, default=args.default, seed=args.seed)
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(summary)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
