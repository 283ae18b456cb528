"""KernelGym's test suite (a regular package, so that `tests._kernels` resolves here even where
another distribution installs a top-level `tests` package, as verl's wheel does)."""
