"""What every kernel template shares: the generated `Kernel` (its source and launch),
power-of-two block arithmetic, tile views and the store of a template's result.

Shapes are baked into the kernel as literals (a task has fixed shapes, and constant sizes let
Triton fold the index arithmetic); block sizes are ``tl.constexpr`` parameters given by keyword
at the launch, and grids are ``lambda meta: ...`` of those block sizes, so a launch-parameter
search can rewrite them without touching the kernel. Every kernel is correct for any
power-of-two block size (loops over rows, K and reduction chunks, masks on every edge).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from policies.compiler.codegen import KernelWriter
from policies.compiler.coords import ZERO, Coords, Expr, paren, strides

# Programs a memory-bound kernel aims for (about 4 per SM of a 132-SM H100/H200): row kernels over
# non-contiguous rows shrink their tiles towards it, and products with few tiles split k.
PROGRAMS_MIN = 512


@dataclass
class Kernel:
    """A generated kernel and how forward launches it."""

    name: str
    kind: str                         # pointwise | row | matmul | conv
    nodes: list[int]
    params: list[tuple[str, str]]     # (pointer parameter, forward expression)
    blocks: dict[str, int]            # constexpr block sizes (launch keywords)
    options: dict[str, int]           # num_warps, num_stages
    grid: str                         # grid callable text (of meta)
    body: list[str]
    stored: list[int]
    helpers: set[str] = field(default_factory=set)
    comment: str = ""
    comment_note: str = ""            # what the template adds to the comment (which loads use TMA)
    zero_init: bool = False           # outputs must be zeroed first (split-K adds partial sums)
    # forward variable -> its allocation text (``{dev}`` and the block sizes, e.g. ``{SPLIT_R}``,
    # filled in at the launch)
    scratch: dict[str, str] = field(default_factory=dict)
    pre: Kernel | None = None         # a kernel launched just before this one (a split norm's statistics)
    # kernel parameter -> the TMA tensor descriptor forward builds for it (`Descriptor`); such a
    # kernel's block sizes are bound to forward variables that the launch and descriptors share
    descriptors: dict[str, Descriptor] = field(default_factory=dict)

    def source(self) -> str:
        sig = ", ".join([p for p, _ in self.params] + [f"{b}: tl.constexpr" for b in self.blocks])
        lines = ["@triton.jit", f"def {self.name}({sig}):"]
        if self.comment:
            lines.append(f'    """{self.comment}"""')
        own = "\n".join(lines + self.body) + "\n"
        return (self.pre.source() + "\n\n" + own) if self.pre is not None else own

    def launch(self) -> list[str]:
        # A descriptor's block shape is a host value: with descriptors, each block size is bound
        # once to a forward variable that the descriptors and the launch keyword both read, so a
        # launch rewrite (`policies.launch`, which follows such names to their literal) keeps
        # them equal.
        host = {b: f"{self.name}_{b}" for b in self.blocks} if self.descriptors else {}
        own = [f"{host[b]} = {v}" for b, v in self.blocks.items()] if host else []
        args = [self.descriptors[p].host(e, host) if p in self.descriptors else e for p, e in self.params]
        args += [f"{b}={host.get(b, v)}" for b, v in self.blocks.items()]
        args += [f"{k}={v}" for k, v in self.options.items()]
        own += [f"grid = {self.grid}  # noqa: E731", f"{self.name}[grid]({', '.join(args)})"]
        return (self.pre.launch() + own) if self.pre is not None else own


@dataclass(frozen=True)
class Descriptor:
    """A host-side TMA tensor descriptor over a dense row-major tensor, tiled by `block` (block
    size names, or 1); `shape`: the dims it views the tensor as (its rows folded: a linear's
    (..., k) input as (m, k)), or None for the tensor's own; `operand`: its role in the kernel."""

    block: tuple[str | int, ...]
    shape: tuple[int, ...] | None = None
    operand: str = ""                 # what the kernel reads through it ("a", "b" of a product)

    def host(self, tensor: str, names: dict[str, str]) -> str:
        """The forward expression building this descriptor over `tensor`."""
        block = "[" + ", ".join(str(names.get(b, b)) if isinstance(b, str) else str(b) for b in self.block) + "]"
        if self.shape is None:
            return f"TensorDescriptor.from_tensor({tensor}, {block})"
        return f"TensorDescriptor({tensor}, {list(self.shape)}, {strides(self.shape)}, {block})"


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def clamp_pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, next_pow2(n)))


def fill_block(block: int, size: int, copies: int = 1) -> int:
    """`block` halved (not below 16, a 64-byte fp32 piece) until ``cdiv(size, block) * copies``
    programs reach `PROGRAMS_MIN`: memory-bound kernels need programs on every SM."""
    while block > 16 and -(-size // block) * copies < PROGRAMS_MIN:
        block //= 2
    return block


def tile_view(e: Expr, suffix: str) -> Expr:
    """`e` indexed into a larger tile (``[:, None]``, ``[None, :]``)."""
    if e.is_zero:
        return ZERO
    return Expr(None, e.axes, lambda: f"{paren(e)}{suffix}")


def reserve(w: KernelWriter, *names: str) -> None:
    """Keep the template's own variable names from `KernelWriter.fresh` (no generated value takes them)."""
    w.names.update(names)


def store_result(w: KernelWriter, oc: Coords, res: str, stored: Sequence[int], atomic: bool = False) -> None:
    """The output tile's value is `res` (epilogues read it); store every node the group keeps."""
    w.provided[(w.anchor, oc.key)] = res
    for j in stored:
        w.store(j, oc, atomic=atomic)
