"""Training KernelGym policies: verl (GRPO / DRPO with vLLM rollouts) and stable-baselines3.

`train` imports `kernelgym`, never the reverse. Modules:
- `train.build_dataset`: verl parquet data (RL prompts, evaluation suites, warm-up SFT pairs).
- `train.curriculum`: difficulty-curriculum sampling over a dataset or a live task stream.
- `train.verl.reward`, `train.verl.drpo`, `train.verl.multiturn`: verl-free pieces (reward
  functions, the DRPO advantage math, the multi-turn refinement session / interaction).
- `train.verl.register`: the thin verl registrations (advantage estimator, agent loop, sampler).
- `train.smoke_gpu`, `train.sb3_tuning`: runnable scripts.
"""
