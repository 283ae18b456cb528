"""Where the task graph used to live: `kernelgym.graph` is its home; kept so old imports work."""

from kernelgym.graph import RANGE_BY_NAME, Graph, InputSpec, Node

__all__ = ["RANGE_BY_NAME", "Graph", "InputSpec", "Node"]
