"""Row-kernel tiles: reducing a non-innermost axis keeps a tile's rows within one contiguous run
(coalesced loads), a property of the launch defaults that CPU runs cannot time."""

from __future__ import annotations

import re

import pytest

from kernelgym.sampler import TaskSampler

compiler = pytest.importorskip("policies.compiler")


def launch_blocks(src: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(BLOCK_[MR])=(\d+)", src)}


def test_non_innermost_reduction_tiles_follow_the_contiguous_run():
    # d1 bench seed 4: log_softmax over dim 2 of [210, 8, 6045, 2]: runs of 2 contiguous rows.
    task = TaskSampler("bench").sample(1, 4)
    assert task.ops == ("log_softmax",) and task.meta["input_shapes"] == [[210, 8, 6045, 2]]
    assert launch_blocks(compiler.CompilerPolicy().compile(task)) == {"BLOCK_M": 2, "BLOCK_R": 1024}


@pytest.mark.parametrize("shape,dim,blocks", [
    ((4, 100, 64), 2, {"BLOCK_M": 16, "BLOCK_R": 64}),     # 64 contiguous rows, 256 in all: 16 a tile
    ((4, 100, 8192), 2, {"BLOCK_M": 32, "BLOCK_R": 64}),   # 32 contiguous rows a tile, 1024 programs
    ((2048, 8192), 2, {"BLOCK_M": 16, "BLOCK_R": 64}),     # 32 a tile would launch only 256 programs
    ((4, 100, 3), 2, {"BLOCK_M": 16, "BLOCK_R": 128}),     # a short reduced axis: rows fill the tile
    ((8, 4096), 1, {"BLOCK_M": 1, "BLOCK_R": 1024}),       # rows are contiguous: unchanged rule
])
def test_row_tile_rule(shape, dim, blocks):
    src = f'''import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.softmax(x, dim={-dim})


def get_inputs():
    return [torch.randn{shape}]


def get_init_inputs():
    return []
'''
    assert launch_blocks(compiler.CompilerPolicy().compile(src)) == blocks
