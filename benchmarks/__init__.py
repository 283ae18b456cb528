"""KernelGym's benchmarks: one script a measured figure, each run from the checkout's root as
``python -m benchmarks.NAME [ARGS]`` (or ``kernelgym bench NAME [ARGS]``). Modules whose names
start with ``_`` are shared pieces, not benchmarks."""
