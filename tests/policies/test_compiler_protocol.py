"""The `Compiler` protocol (policies.base) that the search drives: the compiler policy implements
it, a plain policy is not one, a half-implemented one is refused; and the compiler reads a task's
`Graph` the same whether the task was sampled or loaded back from its files."""

from __future__ import annotations

import pytest

from kernelgym.sampler import sample_task
from kernelgym.task import Task
from policies.base import COMPILER_METHODS, Compiler, Policy, as_compiler
from policies.compiler import CompilerPolicy
from policies.search import SearchPolicy


class Plain:
    """A policy with no compiler levers (as an LLM policy)."""

    name = "plain"

    def propose(self, task, n=1, history=()):
        return []


class HalfCompiler(Plain):
    """Compiles a partition but offers no partitions, configs, extern choices or costs."""

    name = "half"

    def compile(self, task, partition=None, config=None, extern=None):
        return ""


def test_the_compiler_policy_is_a_compiler_and_a_policy():
    policy = CompilerPolicy()
    assert isinstance(policy, Compiler) and isinstance(policy, Policy)
    assert as_compiler(policy) is policy
    assert SearchPolicy(policy).compiler is policy
    assert all(callable(getattr(CompilerPolicy, m)) for m in COMPILER_METHODS)


def test_a_plain_policy_is_searched_without_compiler_levers():
    assert not isinstance(Plain(), Compiler) and as_compiler(Plain()) is None
    assert SearchPolicy(Plain()).compiler is None


def test_the_search_refuses_a_partial_compiler_naming_what_it_lacks():
    with pytest.raises(TypeError, match="HalfCompiler lacks candidate_partitions, seed_configs, "
                                        "extern_choices, kernel_costs of the Compiler protocol"):
        SearchPolicy(HalfCompiler())


def test_candidate_partitions_take_a_task_and_start_with_what_compile_uses():
    task = sample_task(3, 1, ops=["linear", "gelu", "mul_scalar"])
    policy = CompilerPolicy()
    parts = policy.candidate_partitions(task)
    assert len(parts) >= 3 and len({repr(p) for p in parts}) == len(parts)
    assert policy.compile(task, partition=parts[0]) == policy.compile(task)
    assert policy.compile(task, partition=parts[1]) != policy.compile(task)
    assert policy.candidate_partitions(task, limit=2) == parts[:2]


def test_a_task_loaded_from_its_files_compiles_like_the_sampled_one(tmp_path):
    """The graph read back from JSON (lists for tuples) is the same program to the compiler."""
    task = sample_task(3, 2)
    loaded = Task.from_file(task.write(tmp_path))
    assert loaded.graph is not task.graph
    assert CompilerPolicy().compile(loaded) == CompilerPolicy().compile(task)
