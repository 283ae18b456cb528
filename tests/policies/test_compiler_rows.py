"""Row-kernel tiles: reducing a non-innermost axis keeps a tile's rows within one contiguous run
(coalesced loads), a property of the launch defaults that CPU runs cannot time."""

from __future__ import annotations

import re

import pytest

from tests.policies._tasks import BENCH_LOG_SOFTMAX_MIDDLE, expr_task, module_task

compiler = pytest.importorskip("policies.compiler")


def launch_blocks(src: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(BLOCK_[MR])=(\d+)", src)}


def test_non_innermost_reduction_tiles_follow_the_contiguous_run():
    # log_softmax over dim -2 of [210, 8, 6045, 2]: runs of 2 contiguous rows.
    src = compiler.CompilerPolicy().compile(BENCH_LOG_SOFTMAX_MIDDLE)
    assert launch_blocks(src) == {"BLOCK_M": 2, "BLOCK_R": 1024}


@pytest.mark.parametrize("shape,dim,blocks", [
    ((4, 100, 64), 2, {"BLOCK_M": 16, "BLOCK_R": 128}),    # 64 contiguous rows, 256 in all: 16 a tile
    ((4, 100, 8192), 2, {"BLOCK_M": 32, "BLOCK_R": 128}),  # 32 contiguous rows a tile, 1024 programs
    ((2048, 8192), 2, {"BLOCK_M": 16, "BLOCK_R": 128}),    # 32 a tile would launch only 256 programs
    ((4, 100, 3), 2, {"BLOCK_M": 16, "BLOCK_R": 128}),     # a short reduced axis: rows fill the tile
    ((8, 4096), 1, {"BLOCK_M": 1, "BLOCK_R": 4096}),       # contiguous rows: chunks of up to 4096
    ((8, 32768), 1, {"BLOCK_M": 1, "BLOCK_R": 4096}),
    ((1000, 97), 1, {"BLOCK_M": 4, "BLOCK_R": 128}),       # short rows: tiles of 512 elements
    ((1000, 16), 1, {"BLOCK_M": 32, "BLOCK_R": 16}),
    ((64, 300), 1, {"BLOCK_M": 2, "BLOCK_R": 512}),        # short contiguous rows share a tile
])
def test_row_tile_rule(shape, dim, blocks):
    src = expr_task(f"torch.logsumexp(x, dim={-dim})", shape)
    assert launch_blocks(compiler.CompilerPolicy().compile(src)) == blocks


@pytest.mark.parametrize("expr,shape,width,warps", [
    ("torch.softmax(x, dim=-1)", (8, 8192), 8192, 16),          # a contiguous row of up to 16384: whole
    ("F.layer_norm(x, (4624,))", (8, 4624), 8192, 16),
    ("torch.log_softmax(x, dim=-1)", (64, 300), 512, 4),        # short rows: BLOCK_M rows a tile
    ("torch.softmax(x, dim=1)", (4, 100, 64), 128, 4),          # a non-innermost axis within one chunk
])
def test_a_norm_whose_row_fits_one_tile_reads_it_once(expr, shape, width, warps):
    """A softmax or norm whose whole row fits one tile keeps it in registers: no chunk loop, no
    BLOCK_R for a launch config or the search to shrink below the row, one load of x."""
    src = compiler.CompilerPolicy().compile(expr_task(expr, shape))
    assert "for r0" not in src and "BLOCK_R" not in src, src
    assert f"rr = tl.arange(0, {width})" in src and f"num_warps={warps}" in src
    assert src.count("tl.load(x0_ptr") == 1


def test_a_row_longer_than_the_stash_or_a_smaller_block_r_is_chunked():
    from policies.compiler.rows import ROW_STASH_MAX

    long = compiler.CompilerPolicy().compile(expr_task("torch.softmax(x, dim=-1)", (512, 2 * ROW_STASH_MAX)))
    assert "for r0 in range(0, 32768, BLOCK_R)" in long and launch_blocks(long)["BLOCK_R"] == 4096
    task = expr_task("torch.softmax(x, dim=-1)", (8, 8192))
    small = compiler.CompilerPolicy().compile(task, config={"BLOCK_R": 1024})
    assert small.count("for r0 in range(0, 8192, BLOCK_R)") == 2 and launch_blocks(small)["BLOCK_R"] == 1024
    per_kernel = compiler.CompilerPolicy().compile(task, config={"kernels": {"0": {"BLOCK_R": 2048}}})
    assert launch_blocks(per_kernel)["BLOCK_R"] == 2048
    assert "for r0" not in compiler.CompilerPolicy().compile(task, config={"BLOCK_R": 8192})


# Rows kept in registers against the chunked form (BLOCK_R 16), with what is fused before the
# norm: KernelBench level 2's batch norm -> tanh -> max pool -> group norm (11), a max pool before
# a channel softmax (89), a GELU before a softmax (99), and a norm with a tail reduction.
STASHED = {
    "bn_tanh_pool_group_norm": ("self.gn(F.max_pool2d(torch.tanh(self.bn(x)), 2))", "2, 8, 6, 6",
                                "self.bn = nn.BatchNorm2d(8).eval(); self.gn = nn.GroupNorm(2, 8)"),
    "pool_channel_softmax": ("torch.softmax(F.max_pool2d(x, 2), dim=1) - 0.5", "2, 20, 4, 4", "pass"),
    "gelu_softmax": ("torch.softmax(F.gelu(x), dim=1)", "3, 50", "pass"),
    "gelu_log_softmax": ("torch.log_softmax(F.gelu(x), dim=-1)", "3, 50", "pass"),
    "rms_norm_relu": ("torch.relu(F.rms_norm(x * 2.0, (20,)))", "3, 20", "pass"),
    "instance_norm_sum": ("torch.sum(F.instance_norm(torch.sigmoid(x)), dim=(2, 3))", "2, 3, 5, 5", "pass"),
    "layer_norm_amax": ("torch.amax(self.ln(x), dim=-1)", "6, 40", "self.ln = nn.LayerNorm(40)"),
}


def test_rows_kept_in_registers_match_the_chunked_form(evaluator):
    from kernelgym.task import Task

    pairs = []
    policy = compiler.CompilerPolicy()
    for name, (expr, shape, init) in sorted(STASHED.items()):
        task = Task.from_source(module_task(expr, "x", f"torch.randn({shape})", init))
        src = policy.compile(task)
        assert "BLOCK_R" not in src, (name, src)
        chunked = policy.compile(task, config={"BLOCK_R": 16})
        assert "for r0" in chunked, name
        pairs += [(task, src), (task, chunked)]
    verdicts = evaluator.evaluate_batch(pairs, backend="interpret", seed=5)
    bad = [(p[0].source.split("return ")[1].split("\n")[0], v.status, v.error[:300])
           for p, v in zip(pairs, verdicts) if v.status != "ok"]
    assert not bad, bad


def test_short_contiguous_rows_take_one_warp_a_tile():
    """Rows of up to 128 elements: 512-element tiles of one warp (an H200 ran a std over rows of 97
    in 15.3 us so, 24.1 us with 8 rows and 4 warps a tile); longer rows keep 4 or 8 warps."""
    warps = {}
    for r in (97, 300, 8192):
        src = expr_task("torch.std(x, dim=-1)", f"1000, {r}")
        warps[r] = int(re.search(r"num_warps=(\d+)", compiler.CompilerPolicy().compile(src)).group(1))
    assert warps == {97: 1, 300: 4, 8192: 8}


def tail_task(expr: str, shape: str, r: int) -> str:
    """A task returning `expr` of x (`shape`) with a LayerNorm over the last `r` elements as self.ln."""
    return module_task(expr, "x", f"torch.randn({shape})", f"self.ln = nn.LayerNorm({r})")


TAILS = {  # name: (forward expression, input shape, normalised length)
    "layer_norm_amax": ("torch.amax(self.ln(x), dim=-1)", "6, 40", 40),
    "softmax_relu_scaled_sum_keepdim": ("torch.sum(torch.relu(torch.softmax(x, dim=-1)) * 2.0, dim=-1, keepdim=True)",
                                        "3, 5, 33", 33),
    "log_softmax_mean_middle_axis": ("torch.mean(torch.log_softmax(x, dim=1), dim=1)", "4, 70, 3", 3),
    "layer_norm_norm_and_side_output": ("(y := self.ln(x), torch.linalg.vector_norm(y, dim=-1))", "5, 24", 24),
    "softmax_amin": ("torch.amin(torch.softmax(x, dim=-1), dim=-1)", "7, 300", 300),
}


def kernel_count(src: str) -> int:
    return src.count("@triton.jit")


@pytest.mark.parametrize("name", sorted(TAILS))
def test_a_normalised_row_and_its_reduction_are_one_kernel(evaluator, name):
    """softmax / norm -> (elementwise ->) a reduction over the same rows: the reduction is a tail
    of the row kernel, accumulated in the pass that writes the normalised values, so the
    normalised tensor is not written out and read back (unless it is an output itself)."""
    from kernelgym.task import Task

    expr, shape, r = TAILS[name]
    task = Task.from_source(tail_task(expr, shape, r))
    policy = compiler.CompilerPolicy()
    src = policy.compile(task)
    assert kernel_count(src) == 1 and "tail = " in src, src
    small = policy.compile(task, config={"BLOCK_R": 16, "BLOCK_M": 2})   # several chunks a row
    verdicts = evaluator.evaluate_batch([(task, src), (task, small)], backend="interpret", seed=2)
    assert [v.status for v in verdicts] == ["ok", "ok"], [(v.status, v.error[:300]) for v in verdicts]


@pytest.mark.parametrize("expr, shape, message", [
    ("torch.amax(self.ln(x), dim=0)", "6, 40", "does not reduce the rows"),                 # other axis
    ("torch.relu(torch.amax(self.ln(x), dim=-1))", "6, 40", "comes after the tail reduction"),
    ("torch.amax(torch.sum(x, dim=-1, keepdim=True), dim=-1)", "6, 40", "both need their own loop"),
    ("torch.std(self.ln(x), dim=-1)", "6, 40", "both need their own loop"),                  # not a tail op
])
def test_reductions_that_cannot_be_a_tail(expr, shape, message):
    from kernelgym.task import Task

    task = Task.from_source(tail_task(expr, shape, 40))
    policy = compiler.CompilerPolicy()
    assert kernel_count(policy.compile(task)) == 2
    with pytest.raises(compiler.PartitionError, match=message):
        policy.compile(task, partition=[list(range(len(policy.program(task).graph.nodes)))])


NORMS = {  # normalising row over the last axis of x: (expression, input shape)
    "softmax": ("torch.softmax(x, dim=-1)", "4, 37"),
    "log_softmax": ("torch.log_softmax(x, dim=-1)", "4, 37"),
    "layer_norm": ("F.layer_norm(x, (37,))", "4, 37"),
    "rms_norm": ("F.rms_norm(x, (37,))", "4, 37"),
    "instance_norm": ("F.instance_norm(x)", "2, 3, 37"),
}
TAIL_OPS = {"sum": "torch.sum({y}, dim=-1)", "mean": "torch.mean({y}, dim=-1)", "amax": "torch.amax({y}, dim=-1)",
            "amin": "torch.amin({y}, dim=-1)", "norm": "torch.linalg.vector_norm({y}, dim=-1)"}


def test_every_normalising_row_takes_every_tail_reduction(evaluator):
    from kernelgym.task import Task
    from policies.compiler.ir import TAIL_REDUCE

    assert set(TAIL_OPS) == TAIL_REDUCE
    policy = compiler.CompilerPolicy()
    pairs = []
    for norm, (y, shape) in sorted(NORMS.items()):
        for tail, fmt in sorted(TAIL_OPS.items()):
            task = Task.from_source(tail_task(fmt.format(y=y), shape, 37))
            src = policy.compile(task)
            assert kernel_count(src) == 1 and "tail = " in src, (norm, tail)
            pairs.append((task, src))
    verdicts = evaluator.evaluate_batch(pairs, backend="interpret", seed=9)
    bad = [(p[0].source.split("return ")[1].split("\n")[0], v.status, v.error[:200])
           for p, v in zip(pairs, verdicts) if v.status != "ok"]
    assert not bad, bad


SPLITS = {  # name: (forward expression, input shape); few row tiles and a long reduced axis
    "norm_over_rows": ("torch.linalg.vector_norm(torch.sin(x), dim=0)", "2048, 64"),
    "sum_over_middle_axis_keepdim": ("torch.sum(x, dim=1, keepdim=True)", "2, 1024, 32"),
    "mean_with_epilogue": ("torch.relu(torch.mean(x, dim=0) - 0.01) * 2.0", "1536, 64"),
    "contiguous_sum": ("torch.sum(x * x, dim=-1)", "3, 40000"),
    "contiguous_norm": ("torch.linalg.vector_norm(x, dim=-1, keepdim=True)", "2, 50000"),
}


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_sum_folds_with_few_row_tiles_split_the_reduced_axis(evaluator, name):
    """A sum, mean or norm with few row tiles and a long reduced axis splits that axis over
    SPLIT_R programs; the last program of a tile to finish reads the summed partials and finishes
    the rows (norm's sqrt, epilogues). Correct for any SPLIT_R, spans that do not divide r included."""
    from kernelgym.task import Task

    expr, shape = SPLITS[name]
    task = Task.from_source(expr_task(expr, shape))
    policy = compiler.CompilerPolicy()
    src = policy.compile(task)
    assert kernel_count(src) == 1 and re.search(r"SPLIT_R=([2-9]|\d\d+)", src), src
    assert "tl.atomic_add(cnt_ptr + pid, 1" in src and "torch.zeros" in src
    variants = [src] + [policy.compile(task, config={"SPLIT_R": s}) for s in (1, 16)]
    verdicts = evaluator.evaluate_batch([(task, v) for v in variants], backend="interpret", seed=4)
    assert [v.status for v in verdicts] == ["ok"] * 3, [(v.status, v.error[:300]) for v in verdicts]


@pytest.mark.parametrize("expr", ["torch.amax(x, dim=0)", "torch.std(x, dim=0)", "torch.sum(x, dim=0)"])
def test_other_row_kernels_do_not_split(expr):
    """Max / min and Welford folds do not split; nor does a fold with enough row tiles."""
    from kernelgym.task import Task

    shape = "2048, 64" if "sum" not in expr else "64, 65536"
    src = compiler.CompilerPolicy().compile(Task.from_source(expr_task(expr, shape)))
    assert "SPLIT_R" not in src and "atomic" not in src


def test_split_rows_rule():
    from policies.compiler.kernels import PROGRAMS_MIN, ROW_SPLIT_PROGRAMS, split_rows

    assert split_rows(PROGRAMS_MIN, 1 << 20, 64) == 1            # a wave of tiles already
    assert split_rows(128, 2048, 64) == 8                        # 1024 programs, 4 chunks each
    assert split_rows(1, 2048, 64) == 8                          # stops at 4 chunks a program
    assert split_rows(1, 255, 64) == 1                           # under 2 x 4 chunks: no split
    assert split_rows(4, 1 << 24, 2048) * 4 == ROW_SPLIT_PROGRAMS


# Norms over few long rows (2 rows of 40000, 2 instances of 200 x 200 ...): the row's statistics
# are split over SPLIT_R programs in a first kernel and merged by the second, which normalises its
# own span; with what the group fuses before and after the norm. The inputs rise along the row
# (`torch.linspace`), so the spans' means differ and merging them needs the between-span term.
SPLIT_NORMS = {
    "layer_norm": ("torch.relu(self.ln(x * 2.0)) - 0.5", "2, 40000", "self.ln = nn.LayerNorm(40000)"),
    "group_norm": ("torch.tanh(self.gn(torch.sigmoid(x)))", "2, 4, 130, 130", "self.gn = nn.GroupNorm(2, 4)"),
    "instance_norm": ("F.instance_norm(x) * 3.0", "1, 2, 200, 200", "pass"),
    "rms_norm": ("F.rms_norm(x - 1.0, (40000,))", "2, 40000", "pass"),
    "softmax": ("torch.softmax(x * 4.0, dim=-1) * 1000.0", "2, 40000", "pass"),
    "log_softmax": ("torch.log_softmax(torch.exp(x), dim=-1)", "2, 40000", "pass"),
}


def test_norms_over_few_long_rows_split_their_statistics(evaluator):
    """Correct for the default split, one span a row, and spans past the row's end (SPLIT_R 32
    x BLOCK_R 1024 over 40000: a third of the programs hold no element and store empty partials)."""
    from kernelgym.task import Task

    pairs = []
    policy = compiler.CompilerPolicy()
    for name, (expr, shape, init) in sorted(SPLIT_NORMS.items()):
        last = shape.rsplit(",", 1)[1].strip()
        task = Task.from_source(module_task(expr, "x", f"torch.randn({shape}) + torch.linspace(0, 8, {last})", init))
        src = policy.compile(task)
        assert src.count("[grid](") == 2 and re.search(r"SPLIT_R=([2-9]|\d\d+)", src), (name, src)
        assert "as 2 Triton kernel(s)" in src
        assert "_stats[grid](" in src and "_ws = torch.empty((" in src, name
        variants = [src] + [policy.compile(task, config=c) for c in ({"SPLIT_R": 1}, {"SPLIT_R": 32, "BLOCK_R": 1024})]
        assert "SPLIT_R=32" in variants[2] and "* 32,)" in variants[2], variants[2]
        pairs += [(task, v) for v in variants]
    verdicts = evaluator.evaluate_batch(pairs, backend="interpret", seed=6)
    bad = [(p[0].source.split("return ")[1].split("\n")[0], v.status, v.error[:300])
           for p, v in zip(pairs, verdicts) if v.status != "ok"]
    assert not bad, bad


def test_a_norm_with_a_tail_or_many_rows_is_not_split():
    from kernelgym.task import Task

    policy = compiler.CompilerPolicy()
    tail = policy.compile(Task.from_source(tail_task("torch.amax(self.ln(x), dim=-1)", "2, 40000", 40000)))
    many = policy.compile(Task.from_source(expr_task("torch.softmax(x, dim=-1)", "1024, 40000")))
    for src in (tail, many):
        assert "SPLIT_R" not in src and "_stats" not in src and src.count("[grid](") == 1
