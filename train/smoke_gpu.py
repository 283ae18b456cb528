"""End-to-end smoke test of the training loop, without verl: generate, judge, DRPO, update.

    python -m train.smoke_gpu --out runs/smoke.jsonl [--steps 5] [--tasks 2] [--group 4] [--estimator drpo]

A tiny randomly initialised causal LM (a transformers Llama built from a config: nothing is
downloaded) with a byte-level tokenizer writes `group - 1` completions per task; one known-good
completion joins each group (the compiler policy's kernel when `policies.compiler` exists, else a
hand-written Triton ReLU for the ReLU tasks this script then samples), so rewards vary within a
group. KernelGym judges every completion for real (`evaluate_batch`: the GPU on a CUDA machine, the
Triton interpreter otherwise; most random completions are format errors), the DRPO (or GRPO)
advantages weight a REINFORCE loss on the mean token log-likelihood, and one optimiser step runs
per training step. Each step appends one JSON line to --out: loss, reward and every reward
component (means), verdict statuses, advantages, curriculum state, seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernelgym.envs.curriculum import Curriculum
from kernelgym.evaluation import Evaluator, evaluate_batch, resolve_backend
from kernelgym.evaluation.protocol import BACKENDS
from kernelgym.examples import unary_candidate
from kernelgym.task import Task
from train.build_dataset import prompt_text, solution_text
from train.curriculum import CurriculumTaskStream
from train.verl.drpo import drpo_advantages, grpo_advantages
from train.verl.reward import make_reward, verdict_score

BOS, EOS, PAD = 256, 257, 258
VOCAB = 259

RELU_KERNEL = unary_candidate(name="relu_kernel", block=256, warps=None)


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255 plus BOS / EOS / PAD: a tokenizer that needs no download."""

    vocab_size = VOCAB

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def tiny_model(device: str, seed: int) -> torch.nn.Module:
    """A 2-layer Llama with random weights (about 0.1M parameters)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=8192,
                      bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    return LlamaForCausalLM(cfg).to(device)


class Reference:
    """The known-good completion of each group: compiler policy when present, else the ReLU kernel."""

    def __init__(self, which: str) -> None:
        self.policy = None
        if which in ("auto", "compiler"):
            try:
                from policies.compiler import CompilerPolicy

                self.policy = CompilerPolicy()
            except ImportError:
                if which == "compiler":
                    raise
        self.ops = None if self.policy is not None else ["relu"]
        self.name = "compiler" if self.policy is not None else "builtin-relu"

    def completion(self, task: Task) -> str | None:
        """The known-good completion for `task`, or None when the compiler cannot compile it."""
        if self.policy is None:
            return solution_text(RELU_KERNEL)
        try:
            cands = self.policy.propose(task, 1)
        except Exception:  # noqa: BLE001 - no lowering for one of the task's ops
            return None
        return solution_text(cands[0]) if cands else None


def next_task(stream: CurriculumTaskStream, ref: Reference, tries: int = 20) -> tuple[Task, str]:
    """The next task the reference can solve, with its known-good completion."""
    for _ in range(tries):
        task = stream.next()
        good = ref.completion(task)
        if good is not None:
            return task, good
    raise RuntimeError(f"the {ref.name} reference could not solve {tries} tasks in a row")


def sequence_logprob(model: torch.nn.Module, prompt: list[int], completion: list[int], device: str) -> torch.Tensor:
    """Mean log-likelihood of `completion` tokens after `prompt` (differentiable)."""
    ids = torch.tensor([prompt + completion], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(completion, device=device)
    return logp.gather(1, target[:, None]).mean()


@torch.no_grad()
def sample(model: torch.nn.Module, prompt: list[int], n: int, max_new: int, device: str,
           temperature: float = 1.0) -> list[list[int]]:
    ids = torch.tensor([prompt] * n, device=device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=temperature,
                         top_k=0, max_new_tokens=max_new, pad_token_id=PAD, eos_token_id=EOS)
    rows = []
    for row in out[:, len(prompt):].tolist():
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.smoke_gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON-lines log (one line per step)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--tasks", type=int, default=2, help="tasks (prompts) per step")
    p.add_argument("--group", type=int, default=4, help="completions per task, the known-good one included")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-prompt-tokens", type=int, default=512, help="keep the prompt's last N tokens")
    p.add_argument("--estimator", choices=["drpo", "grpo"], default="drpo")
    p.add_argument("--lam", type=float, default=1.0, help="DRPO speed temperature")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device", default="auto", help="model device: auto, cuda or cpu")
    p.add_argument("--reference", default="auto", choices=["auto", "compiler", "builtin"],
                   help="source of the known-good completion in each group")
    p.add_argument("--difficulty", type=int, default=1, help="curriculum start")
    p.add_argument("--sizes", default="tiny", choices=["tiny", "bench"], help="task size profile")
    p.add_argument("--workers", type=int, default=2, help="evaluator workers")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace, evaluator: Evaluator | None = None) -> list[dict[str, Any]]:
    if args.group < 2:
        raise ValueError("--group must be >= 2 (one known-good completion plus model samples)")
    backend = resolve_backend(args.backend)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    tok = ByteTokenizer()
    model = tiny_model(device, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    ref = Reference(args.reference)
    curriculum = Curriculum(start=args.difficulty, window=max(2, args.tasks * 2))
    stream = CurriculumTaskStream(curriculum, sizes=args.sizes, seed=args.seed, ops=ref.ops)
    reward = make_reward("decoupled")
    own = evaluator is None
    ev = evaluator or Evaluator(workers=args.workers, timeout=120)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    logs: list[dict[str, Any]] = []
    try:
        with out.open("a") as fh:
            for step in range(args.steps):
                t0 = time.perf_counter()
                drawn = [next_task(stream, ref) for _ in range(args.tasks)]
                tasks = [t for t, _ in drawn]
                prompts, completions, pairs, index = [], [], [], []
                for ti, (task, good) in enumerate(drawn):
                    prompt = [BOS] + tok.encode(prompt_text(task, backend))[-args.max_prompt_tokens:]
                    model.eval()
                    group = sample(model, prompt, args.group - 1, args.max_new_tokens, device)
                    group.append(tok.encode(good) + [EOS])
                    for comp in group:
                        prompts.append(prompt)
                        completions.append(comp)
                        pairs.append((task, tok.decode(comp)))
                        index.append(ti)
                t_gen = time.perf_counter() - t0
                verdicts = evaluate_batch(pairs, backend=backend, evaluator=ev)
                t_eval = time.perf_counter() - t0 - t_gen
                scores = [verdict_score(v, reward, t.difficulty) for v, (t, _) in zip(verdicts, pairs)]
                correct = np.array([s["correct"] > 0 for s in scores])
                if args.estimator == "drpo":
                    adv = drpo_advantages(correct, [s["reward/speed"] for s in scores], index, args.lam,
                                          neg_weights=[1.0 + s["hack"] for s in scores])
                else:
                    adv = grpo_advantages([s["score"] for s in scores], index)
                model.train()
                opt.zero_grad()
                loss = torch.zeros((), device=device)
                for a, p, c in zip(adv, prompts, completions):
                    if a != 0 and c:
                        loss = loss - float(a) * sequence_logprob(model, p, c, device) / len(adv)
                if loss.requires_grad:
                    loss.backward()
                    opt.step()
                stream.update([v for v in verdicts], index)
                keys = [k for k in scores[0] if k != "difficulty"]
                entry = {
                    "step": step, "loss": float(loss.detach()), "estimator": args.estimator, "backend": backend,
                    "device": device, "reference": ref.name, "tasks": [t.id for t in tasks],
                    "reward_mean": float(np.mean([s["score"] for s in scores])),
                    "components": {k: float(np.mean([s[k] for s in scores])) for k in keys},
                    "statuses": dict(Counter(v.status for v in verdicts)),
                    "advantages": [round(float(a), 6) for a in adv], "correct": correct.astype(int).tolist(),
                    "curriculum": curriculum.state(),
                    "seconds": {"generate": round(t_gen, 3), "evaluate": round(t_eval, 3),
                                "total": round(time.perf_counter() - t0, 3)},
                }
                if not all(math.isfinite(x) for x in (entry["loss"], entry["reward_mean"])):
                    raise RuntimeError(f"non-finite loss or reward at step {step}: {entry}")
                fh.write(json.dumps(entry) + "\n")
                fh.flush()
                logs.append(entry)
                print(f"step {step}: loss {entry['loss']:.4f} reward {entry['reward_mean']:.3f} "
                      f"statuses {entry['statuses']} ({entry['seconds']['total']}s)", flush=True)
    finally:
        if own:
            ev.close()
    return logs


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
