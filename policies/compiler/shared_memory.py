"""Launch configs of the tl.dot kernels fitted to the GPU's shared memory.

Each product kernel's shared memory is estimated from its own source at its launch config
(`policies.smem`: pipelined tiles x num_stages, operand staging); a kernel over the budget gets
fewer stages, then smaller tiles (`policies.smem.fit_launch`), whatever set its config (the
template's defaults, the policy's config, a search's variant). Kernels that fit keep their config.
"""

from __future__ import annotations

from collections.abc import Iterable

from kernelgym.pyast import parse
from policies.compiler.ir import CompileError
from policies.compiler.recurrent import RecurrentKernel
from policies.compiler.template import Kernel
from policies.smem import DEFAULT_STAGES, estimate_function, fit_launch, has_dot, jit_functions


def _stages(k: Kernel) -> int:
    # a recurrent kernel's options are its cell's; its products launch at Triton's default
    if isinstance(k, RecurrentKernel):
        return DEFAULT_STAGES
    return int(k.options.get("num_stages", DEFAULT_STAGES))


def fit_shared_memory(kernels: Iterable[Kernel], element_bytes: int, budget: int) -> None:
    """Lower num_stages, then tiles, of each tl.dot kernel whose estimate exceeds `budget` bytes
    (in place; the kernel's docstring says what changed). Raises `CompileError` for a kernel that
    does not fit even at one stage and 16-wide tiles."""
    for k in kernels:
        fns = [f for f in jit_functions(parse(k.source())).values() if has_dot(f)]
        if not fns:
            continue
        stages = _stages(k)

        def estimate(blocks: dict[str, int], ns: int, fns=fns) -> int:
            return max(e.bytes for f in fns if (e := estimate_function(f, blocks, ns, element_bytes)) is not None)

        before = estimate(dict(k.blocks), stages)
        if before <= budget:
            continue
        fitted = fit_launch(estimate, k.blocks, stages, budget, stages_fixed=isinstance(k, RecurrentKernel))
        if fitted is None:
            raise CompileError(f"{k.name}: estimated shared memory {before} bytes exceeds the {budget}-byte "
                               "budget even at num_stages=1 and 16-wide tiles")
        blocks, ns = fitted
        changes = [f"{key} {k.blocks[key]} -> {v}" for key, v in blocks.items() if v != k.blocks[key]]
        if ns != stages:
            changes.insert(0, f"num_stages {stages} -> {ns}")
            k.options["num_stages"] = ns
        k.blocks.update(blocks)
        note = (f"launch fitted to shared memory ({', '.join(changes)}): estimated {before} -> "
                f"{estimate(blocks, ns)} bytes, budget {budget}")
        k.comment = f"{k.comment}; {note}" if k.comment else note
