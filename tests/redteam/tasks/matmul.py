import torch
import torch.nn as nn


class Model(nn.Module):
    """a @ b"""

    def __init__(self):
        super().__init__()

    def forward(self, a, b):
        return a @ b


def get_inputs():
    return [torch.randn(16, 32), torch.randn(32, 24)]


def get_init_inputs():
    return []
