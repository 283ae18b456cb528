"""Shared test setup: one evaluation worker pool per session, and GPU test skipping."""

from __future__ import annotations

import pytest


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
