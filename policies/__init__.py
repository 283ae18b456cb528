"""Policies that turn KernelGym tasks into Triton candidates (they import kernelgym, never the reverse)."""

from policies.base import Attempt, Policy, Proposal

__all__ = ["Attempt", "Policy", "Proposal"]
