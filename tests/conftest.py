"""Shared test setup: one evaluation worker pool per session, and GPU test skipping."""

from __future__ import annotations

import pytest


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


# Tests that take long on a 2-core machine (measured with --durations; more than a few seconds
# each, or a module of many evaluations), marked `slow` here in one place so that
# `make test-fast` (-m "not slow") stays under 2 minutes. A test can also carry
# @pytest.mark.slow itself. Entries are node-id prefixes.
SLOW = (
    "tests/test_cluster_ray.py",
    "tests/test_benchmark_scripts.py",
    "tests/redteam/test_redteam.py",
    "tests/policies/test_search.py",
    "tests/policies/test_compiler.py",
    "tests/policies/test_compiler_splitk.py",
    "tests/policies/test_compiler_rows.py",
    "tests/policies/test_compiler_conv.py",
    "tests/policies/test_compiler_precision.py",
    "tests/train/test_train_scripts.py",
    "tests/train/test_train_dataset.py",
    "tests/test_runner.py::test_cli",
    "tests/test_eval_pool.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = pytest.mark.slow
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(slow)
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def evaluator():
    """The session's one Evaluator: small pools, a 2 GB memory limit per worker."""
    from kernelgym.evaluation import Evaluator

    with Evaluator(workers=2, reference_workers=1, ptx_workers=1, memory_limit_mb=2048, timeout=60) as ev:
        yield ev
