"""The guards' storage helpers: write probes of large storages (block sums) and comparisons in
slices see every change a copy would, while keeping a fraction of the memory."""

from __future__ import annotations

import pytest
import torch

from kernelgym.evaluation.guards.runtime import storage
from kernelgym.evaluation.guards.runtime.storage import (
    bytes_changed,
    probe_changed,
    storage_bytes,
    write_probe,
)


@pytest.fixture
def small_limits(monkeypatch):
    """Storages over 64 bytes are probed by sums of 16-word blocks; comparisons go 100 bytes at a time."""
    monkeypatch.setattr(storage, "PROBE_COPY_BYTES", 64)
    monkeypatch.setattr(storage, "COMPARE_CHUNK_BYTES", 100)
    monkeypatch.setattr(storage, "PROBE_BLOCK_WORDS", 16)
    monkeypatch.setattr(storage, "_WEIGHTS", {})


def _changed(t: torch.Tensor, before: torch.Tensor) -> bool:
    return bool(probe_changed(storage_bytes(t), before))


def test_a_small_storage_is_copied_a_large_one_summarised(small_limits):
    small, large = torch.zeros(16), torch.zeros(1000)   # 64 bytes, 4000 bytes
    assert torch.equal(write_probe(storage_bytes(small)), storage_bytes(small))
    probe = write_probe(storage_bytes(large))
    assert probe.dtype == torch.int64 and probe.numel() < 80   # 62 full blocks, the rest, no tail bytes
    assert not _changed(large, probe)


@pytest.mark.parametrize("edit", ["one word", "last word", "sign bit", "swap", "reverse", "tail byte"])
def test_a_probe_sees_each_kind_of_write(small_limits, edit):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1001, generator=g)                      # 4004 bytes: 1001 words
    b = torch.zeros(4003, dtype=torch.uint8)                # 1000 words and three tail bytes
    target = b if edit == "tail byte" else t
    before = write_probe(storage_bytes(target))
    if edit == "one word":
        t[500] += 1
    elif edit == "last word":
        t[-1] = 7.0
    elif edit == "sign bit":
        t[3] = -t[3]
    elif edit == "swap":
        t[[10, 11]] = t[[11, 10]]
    elif edit == "reverse":
        t.copy_(t.flip(0))
    else:
        b[-1] = 1
    assert _changed(target, before)


def test_a_swap_of_words_that_differ_in_the_sign_bit_only_is_seen(small_limits):
    # int32 words a and a ^ 0x80000000 swapped: a plain (unweighted) sum would not change
    t = torch.tensor([1.5, -1.5] * 40)
    before = write_probe(storage_bytes(t))
    t[[0, 1]] = t[[1, 0]]
    assert _changed(t, before)


def test_bytes_changed_in_slices(small_limits):
    a = torch.arange(1000, dtype=torch.uint8)   # ten slices of 100 bytes
    for i in (0, 99, 100, 999):
        b = a.clone()
        b[i] ^= 1
        assert bool(bytes_changed(a, b))
    assert not bool(bytes_changed(a, a.clone()))
    assert bool(bytes_changed(a, a[:10].clone()))   # a different size is a change
