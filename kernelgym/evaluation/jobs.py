"""Helpers shared by the jobs that run inside worker processes (reference, candidate, ptx)."""

from __future__ import annotations

import traceback
from typing import Any

MAX_MESSAGE = 2000


def to_device(obj: Any, device: str) -> Any:
    """Move every tensor in a nested list/tuple/dict to `device`."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def clone_tree(obj: Any) -> Any:
    """Deep copy of the tensors in a nested structure (for inputs a forward may mutate)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, list):
        return [clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(clone_tree(v) for v in obj)
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    return obj


def outputs_list(value: Any) -> list[Any]:
    """A forward's result as a flat list of outputs, detached and copied to the CPU right away."""
    import torch

    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, torch.Tensor):
            out.append(v.detach().to("cpu", copy=True))
        elif isinstance(v, (bool, int, float)):
            out.append(torch.as_tensor(v))
        else:
            out.append(f"<{type(v).__name__}>")
    return out


def describe(exc: BaseException, filename: str | None = None) -> str:
    """`Type: message`, plus the innermost line of `filename` (the candidate) in the traceback."""
    text = f"{type(exc).__name__}: {exc}".strip()
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + " ..."
    if filename:
        # The innermost candidate line of each exception in the chain: an error inside a kernel
        # run by Triton's interpreter is re-raised at the launch (InterpreterError from the
        # original), so the kernel's own line is in the cause, the launch line in the outer one.
        lines: list[tuple[int, str]] = []
        for e in reversed(exception_chain(exc)):
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
            if frames and (frames[-1].lineno, frames[-1].line) not in lines:
                lines.append((frames[-1].lineno or 0, frames[-1].line or ""))
        if lines:
            n, line = lines[0]
            text += f" (candidate line {n}: {line.strip()[:200]}"
            if len(lines) > 1:
                text += f"; called from line {lines[-1][0]}: {lines[-1][1].strip()[:200]}"
            text += ")"
    return text


def exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 20:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def is_compile_error(exc: BaseException) -> bool:
    """A Triton compilation failure (syntax/type error in a kernel, ptxas failure, resources)."""
    names = {"CompilationError", "PTXASError", "OutOfResources", "UnsupportedLanguageConstruct"}
    return any(c.__name__ in names for e in exception_chain(exc) for c in type(e).__mro__)


def host_allocation_refused(exc: BaseException) -> bool:
    """torch's host allocator refused a request (nothing was allocated: the process is fine)."""
    return any("DefaultCPUAllocator: can't allocate memory" in str(e) for e in exception_chain(exc))


def crash_kind(exc: BaseException) -> str | None:
    """'out of memory' or 'CUDA error' when the exception means the process is unusable."""
    for e in exception_chain(exc):
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            return "out of memory"
        msg = str(e)
        if "CUDA error" in msg or "illegal memory access" in msg or "CUDA out of memory" in msg:
            return "CUDA error"
    return None


def finding_dict(f: Any) -> dict[str, Any]:
    return {"name": str(f.name), "detail": str(getattr(f, "detail", "")), "line": getattr(f, "line", None)}


def launch_dict(rec: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return v if isinstance(v, (int, float, bool, str, type(None))) else repr(v)

    return {
        "kernel": str(rec.kernel),
        "signature": {str(k): str(v) for k, v in dict(rec.signature).items()},
        "constexprs": {str(k): plain(v) for k, v in dict(rec.constexprs).items()},
        "grid": [int(g) for g in rec.grid],
        "num_warps": rec.num_warps, "num_stages": rec.num_stages,
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- seeded task data

def seed_all(seed: int) -> None:
    """Seed every generator a KernelBench `get_inputs` may draw from (torch, random, numpy)."""
    import random
    import sys

    import torch

    # What torch.manual_seed does for the CPU and CUDA, without its calls for XPU, MTIA and MPS:
    # for a backend that never starts, each queues the seeding with a formatted stack (about 0.2 ms
    # a call, five calls a worker an evaluation).
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)   # queued until CUDA starts, if it has not yet
    random.seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed & 0xFFFFFFFF)


def seeded_task(source: str, seed: int, module_name: str) -> tuple[Any, list[Any], Any]:
    """(task module, init inputs, Model) built from `seed` exactly as the reference worker builds them."""
    from kernelgym import task as taskmod

    module = taskmod.exec_source(source, module_name, filename="<reference>")
    seed_all(seed)
    init_inputs = list(module.get_init_inputs())
    model = module.Model(*init_inputs)
    return module, init_inputs, model


def trial_inputs(module: Any, seed: int, device: str = "cpu") -> list[Any]:
    """A trial's inputs: `get_inputs()` after seeding every generator with the trial seed.

    On a device other than the CPU, `get_inputs()` runs with that device as torch's default, so
    its tensors are drawn there (on an H200 the pool's workers spent about a quarter of their host
    time drawing 1M-element inputs on the CPU); one that fails so is run again on the CPU. Both
    workers of an evaluation build inputs this way on the same device, so they get the same values.
    """
    seed_all(seed)
    if device != "cpu":
        import torch

        try:
            with torch.device(device):
                return list(module.get_inputs())
        except Exception:  # noqa: BLE001 - e.g. a get_inputs() that needs host tensors (.numpy())
            seed_all(seed)
    return list(module.get_inputs())


def read_scalars(values: list[Any]) -> list[Any]:
    """The Python values of 0-dim tensors, read with one host transfer per device (not one sync each)."""
    import torch

    by_device: dict[Any, list[int]] = {}
    for i, t in enumerate(values):
        by_device.setdefault(t.device, []).append(i)
    out: list[Any] = [None] * len(values)
    for idx in by_device.values():
        for i, v in zip(idx, torch.stack([values[i] for i in idx]).tolist()):
            out[i] = v
    return out


class _Sum:
    """A tensor's bit sum, queued where the tensor lives and not read yet (see `Fingerprints`)."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


class Fingerprints:
    """Fingerprints (`fingerprint`) of several values, read back with one host transfer per device.

    `add(obj)` queues each tensor's bit sum where the tensor lives, so what counts is the value at
    that moment (a later in-place change does not), and returns the value's index; `read()` returns
    every value's fingerprint. One sync instead of one per tensor: under a busy GPU each sync waits
    its turn (in the pool a sync costs about a millisecond).
    """

    def __init__(self) -> None:
        self._sums: list[Any] = []
        self._trees: list[Any] = []

    def add(self, obj: Any) -> int:
        self._trees.append(self._walk(obj))
        return len(self._trees) - 1

    def _walk(self, obj: Any) -> Any:
        import torch

        if isinstance(obj, torch.Tensor):
            # summed where the tensor lives: only the sum crosses to the host, not every input's bytes
            t = obj.detach().contiguous().reshape(-1)
            head = ["T", str(obj.dtype).removeprefix("torch."), list(obj.shape)]
            if not t.numel():
                return [*head, 0]
            raw = t.view(torch.uint8)
            raw = raw.view(torch.int32) if raw.numel() % 4 == 0 else raw
            self._sums.append(raw.sum(dtype=torch.int64))
            return [*head, _Sum(len(self._sums) - 1)]
        if isinstance(obj, (list, tuple)):
            return [self._walk(v) for v in obj]
        if isinstance(obj, dict):
            return [[str(k), self._walk(v)] for k, v in obj.items()]
        if isinstance(obj, (bool, int, float, str)) or obj is None:
            return obj
        return f"<{type(obj).__name__}>"

    def read(self) -> list[Any]:
        values = [int(v) for v in read_scalars(self._sums)]

        def fill(node: Any) -> Any:
            if isinstance(node, _Sum):
                return values[node.index]
            if isinstance(node, list):
                return [fill(x) for x in node]
            return node

        return [fill(tree) for tree in self._trees]


def fingerprint(obj: Any) -> Any:
    """A cheap exact summary of a nested value (tensor shape, dtype and a sum of its raw bits), so that
    two processes can check they built the same inputs and weights from the same seeds."""
    fps = Fingerprints()
    fps.add(obj)
    return fps.read()[0]


# ----------------------------------------------------------------------------- the GPU lock, worker side

class GpuSections:
    """The worker's side of the parent's per-GPU lock (see `pool.GpuLock`).

    `hold(mode)` asks the parent for the lock and waits for the grant; on leaving, the device is
    synchronised (nothing of ours may still run while someone times) and the lock released. Inside a
    shared section, `released()` syncs, lets go while the host compiles, and takes it back.
    Enabled per request, when the parent passes a lock with it (the cuda backend); otherwise every
    method is a no-op. `cuda`: synchronise the device before letting go.
    """

    def __init__(self, send: Any, recv: Any, enabled: bool, cuda: bool = True):
        self._send, self._recv, self.enabled, self.cuda = send, recv, enabled, cuda
        self.mode: str | None = None
        self.fault = ""   # the CUDA error a release's sync met, if any

    def _ask(self, mode: str) -> None:
        from kernelgym.evaluation import codec

        self._send(codec.encode({"type": "lock", "mode": mode}))
        reply = codec.decode(self._recv())
        if not isinstance(reply, dict) or reply.get("type") != "granted":
            raise RuntimeError(f"unexpected reply to a GPU lock request: {reply!r}"[:200])
        self.mode = mode

    def _let_go(self) -> None:
        from kernelgym.evaluation import codec

        self.mode = None
        self._send(codec.encode({"type": "lock", "mode": "release"}))

    def acquire(self, mode: str) -> None:
        if self.enabled and self.mode != mode:
            if self.mode is not None:
                self.release()
            self._ask(mode)

    def release(self) -> None:
        if self.enabled and self.mode is not None:
            try:
                if self.cuda:
                    sync("cuda")
            except Exception as exc:  # noqa: BLE001
                # A sticky CUDA error (a kernel faulted): the context is lost, so nothing of ours still
                # runs and the lock can go. Raising here would replace what the section returned (a
                # `crash` result); the error stays on every later CUDA call, and the worker's
                # end-of-candidate probe replaces it.
                self.fault = f"{type(exc).__name__}: {exc}"[:500]
            finally:
                self._let_go()

    def hold(self, mode: str = "shared") -> Any:
        import contextlib

        @contextlib.contextmanager
        def section() -> Any:
            outer = self.mode
            if outer == "exclusive" or outer == mode:
                yield  # already covered
                return
            self.acquire(mode)
            try:
                yield
            finally:
                self.release()
                if outer is not None:
                    self.acquire(outer)

        return section()

    def released(self) -> Any:
        """Around host-only work (JIT compiles) inside a shared section."""
        import contextlib

        @contextlib.contextmanager
        def section() -> Any:
            if not self.enabled or self.mode != "shared":
                yield
                return
            self.release()
            try:
                yield
            finally:
                self.acquire("shared")

        return section()
