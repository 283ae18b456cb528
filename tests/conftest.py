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
    "tests/policies/test_compiler_level3.py::test_level3_constructs_compile_to_triton_only_and_are_ok",
    "tests/train/test_train_scripts.py",
    "tests/train/test_train_dataset.py",
    "tests/test_runner.py::test_cli",
    "tests/test_eval_pool.py",
    "tests/test_eval_pipeline.py::test_cli_eval_json",
    "tests/test_eval_pipeline.py::test_invalid_reference",
    "tests/test_eval_sandbox.py::test_huge_allocations",
    "tests/test_eval_sandbox.py::test_no_orphan_processes_after_close",
    "tests/test_eval_sandbox.py::test_segfault_is_crash",
    "tests/test_eval_sandbox.py::test_infinite_loop",
    "tests/test_eval_sandbox.py::test_os_exit_crash",
    "tests/test_guards_runtime.py::test_runtime_layer[legit/matmul]",
    "tests/test_cli_messages.py::test_parent_process_never_loads_torch",
    "tests/test_cli_messages.py::test_main_job_needs_no_dev_extra",
    "tests/test_cli_messages.py::test_in_flight_names_the_running_phase",
    "tests/test_ops.py::test_broadcast_rule_matches_torch",
    "tests/test_envs_discrete.py::test_sb3_ppo_trains",
    "tests/test_envs_discrete.py::test_check_env_and_rewards",
    "tests/test_envs.py::test_async_vector_env",
    "tests/test_curriculum.py::test_wrapper_sets_difficulty_and_reports",
    "tests/policies/test_llm.py::test_end_to_end_stub_server_kernel_is_ok",
    "tests/policies/test_llm.py::test_hf_random_model",
    "tests/policies/test_llm.py::test_kernelgym_run_with_the_llm_policy",
    "tests/test_sampler.py::test_same_seed_same_task_in_a_fresh_process",
    "tests/test_sampler.py::test_sample_many_with_workers",
    "tests/test_sampler.py::test_bench_sizes_fill_the_gpu",
    "tests/test_sampler.py::test_same_seed_same_task_regardless_of_history",
    "tests/test_sampler.py::test_long_programs",
    "tests/test_pyast.py::test_many_threads_parse_at_once",
    "tests/test_task.py::test_sample_cli_writes_tasks_and_index",
    "tests/test_task.py::test_sample_pairs_writes_accepted_solutions_only",
    "tests/redteam/test_redteam_os.py",
    "tests/test_soak.py",
    "tests/policies/test_compiler_extern.py::test_conv_extern_one_vendor_call_one_fused_kernel_ok",
    "tests/policies/test_compiler_reduce.py::test_traced_family_problems_map_to_catalog_ops_and_are_ok",
    "tests/policies/test_compiler_reduce.py::test_sampled_family_tasks_are_ok",
    "tests/policies/test_compiler_pools.py::test_pool_and_norm_tasks_are_ok_in_strict_mode",
    "tests/policies/test_compiler_linalg.py::test_problems_compile_to_triton_only_and_are_ok",
    "tests/test_guards_runtime.py::test_runtime_layer[legit/relu_add]",
    "tests/test_envs.py::test_batched_vector_env_one_evaluate_batch_call",
    "tests/policies/test_compiler_recurrent.py::test_problems_compile_to_triton_only_and_are_ok",
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
