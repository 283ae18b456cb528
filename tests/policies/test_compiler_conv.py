"""Convolution kernels: tiles of output positions stay inside one image when an image has enough of
them (their stores are then contiguous runs, which Triton coalesces; on an H200 a conv1d whose
tiles crossed images lost to cuDNN), small images share tiles, and BLOCK_K keeps the padding of
a short reduction small. Judged under the interpreter (with the evaluator's sm_90 PTX check)."""

from __future__ import annotations

import pytest

from kernelgym.task import Task

compiler = pytest.importorskip("policies.compiler")
from policies.compiler.kernels import CONV_TILE_MIN, dot_block_k  # noqa: E402

TEMPLATE = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.{cls}({args})

    def forward(self, x):
        return F.relu(self.conv(x)) + 0.5


def get_inputs():
    return [torch.randn({shape})]


def get_init_inputs():
    return []
'''

# name: (module class, its arguments, input shape, output positions per image)
CASES = {
    "conv1d": ("Conv1d", "3, 5, kernel_size=3", "2, 3, 70", 68),
    "conv2d_pad_stride": ("Conv2d", "2, 4, kernel_size=3, stride=2, padding=1", "3, 2, 17, 17", 81),
    "conv_transpose2d": ("ConvTranspose2d", "2, 3, kernel_size=3, stride=2", "2, 2, 5, 5", 121),
    "conv2d_small_images": ("Conv2d", "2, 4, kernel_size=3", "3, 2, 6, 6", 16),
    "conv2d_one_image": ("Conv2d", "2, 4, kernel_size=3", "1, 2, 10, 10", 64),
}


def case_task(name: str) -> Task:
    cls, args, shape, _ = CASES[name]
    return Task.from_source(TEMPLATE.format(cls=cls, args=args, shape=shape))


@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_tiles_and_verdicts(evaluator, name):
    task = case_task(name)
    per_image = CASES[name][3] >= CONV_TILE_MIN
    policy = compiler.CompilerPolicy()
    src = policy.compile(task)
    batched = int(CASES[name][2].split(",")[0]) > 1
    assert ("pid_b = pid_p //" in src) == (per_image and batched), src
    # with tiles of its own, an image's output offset is its base plus a contiguous run of positions
    assert ("rc[None, :] * %d + rp[:, None]" % CASES[name][3] in src) == per_image, src
    small = policy.compile(task, config={"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16})
    verdicts = evaluator.evaluate_batch([(task, src), (task, small)], backend="interpret", seed=4)
    assert [v.status for v in verdicts] == ["ok", "ok"], [(v.status, v.error[:400]) for v in verdicts]


@pytest.mark.parametrize("k, block", [(9, 16), (16, 16), (27, 32), (32, 32), (39, 16), (48, 16), (64, 32),
                                      (80, 16), (200, 32), (211, 32), (1000, 32)])
def test_dot_block_k_pads_least(k, block):
    assert dot_block_k(k) == block
