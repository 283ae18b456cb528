"""Hack: no Triton at all, plain torch in forward.
Task: relu_add
Mode: strict
Expect: guard:no_triton_kernel
Layer: static
"""
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x, y):
        return torch.relu(x + y)
