"""Worker process main loop: `python -m kernelgym.evaluation.worker ROLE FD`.

Started by `pool.Worker` with its environment already set (TRITON_INTERPRET=1 for interpreter
candidates, CUDA_VISIBLE_DEVICES="" for CPU roles), in its own session so the parent can kill the
whole process group: either forked from a template process that imported torch, Triton and dynamo
once (`template`, the default; `serve` runs in the child) or exec'd (`main`). It confines itself
(`sandbox`), then serves requests over the socket `FD`:
each request gets any number of ``{"type": "phase"}`` messages (the parent's per-phase timeout
restarts at each) and then one ``{"type": "result"}``. Messages use `codec` in both directions.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import sys
import tempfile
import time
from typing import Any

from kernelgym.evaluation.protocol import LAZY_DYNAMO_ENV, SYNC_ENV, SYNC_SCHEDULES

MAX_REQUEST_BYTES = 4 << 30


def _handlers() -> dict[str, Any]:
    from kernelgym.evaluation import candidate, compile_only, ptx, reference

    return {
        "reference": reference.run_reference,
        "prepare_baseline": reference.prepare_baselines,
        "baseline": reference.time_baselines,
        "end_reference": reference.end_reference,
        "compare": reference.compare,
        "drop": reference.drop,
        "candidate": candidate.run_candidate,
        "time": candidate.time_candidate,
        "end_candidate": candidate.end_candidate,
        "ptx": ptx.run_ptx_check,
        "footprint": reference.estimate_footprint,
        "precompile": compile_only.run_precompile,
    }


# Cached-but-unused GPU memory a worker may keep between requests (KERNELGYM_GPU_CACHE_MB). The
# GPU's memory budget sets this much aside for each of its workers (`footprint.gpu_budget_bytes`):
# at 1024, 24 workers took 24 GiB of an 80 GiB H100's budget, which left 35 GiB for evaluations and
# ran KernelBench level 2 mostly one evaluation at a time (session 16). A task's tensors larger
# than this are allocated afresh per request either way.
DEFAULT_GPU_CACHE_MB = 256


def trim_gpu_cache(keep_bytes: int, cuda: Any = None, hold: Any = None) -> bool:
    """Give cached-but-unused GPU memory back to the driver when more than `keep_bytes` is cached.

    Two dozen workers share one GPU, and torch's caching allocator keeps what a finished request
    freed: on an H200 with bench-size tasks the workers together held the whole GPU, so a correct
    candidate failed with out of memory because of its neighbours. Live tensors (stored reference
    outputs, a running evaluation's state) are untouched. `hold`: the worker's GPU-lock section
    (``GpuSections.hold``), so freeing never overlaps another worker's timing. `cuda`: the
    torch.cuda module (tests).
    """
    if cuda is None:
        import torch

        cuda = torch.cuda
    if not cuda.is_available() or not cuda.is_initialized():
        return False
    if cuda.memory_reserved() - cuda.memory_allocated() <= keep_bytes:
        return False
    with hold("shared") if hold is not None else contextlib.nullcontext():
        cuda.empty_cache()
    return True


def _harden() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a segfaulting candidate must not dump GBs
    try:  # orphaned grandchildren re-parent to us, so the parent can still find and kill them
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


CONFINED_ROLES = ("candidate", "ptx", "precompile")   # the roles that run candidate code
# Set: a confined worker keeps its last candidate's Triton cache until the next candidate (to inspect it).
KEEP_CACHE_ENV = "KERNELGYM_KEEP_TRITON_CACHE"
CPU_ROLES = ("ptx", "precompile")                     # never touch a GPU, never take the GPU lock


def _confine(role: str, tmpdir: str) -> str:
    """Confine a worker that runs candidate code (`sandbox`), first thing, while it has one thread:
    its provenance label ("landlock-abi<N>", or "false" when it runs unconfined)."""
    if role not in CONFINED_ROLES:
        return "false"   # reference workers run the task's code, never a candidate's
    from kernelgym.evaluation import sandbox

    # A precompile worker compiles for a GPU (Triton's tools) without having one.
    gpu = role == "candidate" and os.environ.get("TRITON_INTERPRET") != "1"
    # A benchmark that profiles the workers (PROFILE_ENV, set by whoever runs the evaluator, never by
    # a candidate) needs its folder writable to write the profile.
    profile = os.environ.get(PROFILE_ENV)
    rep = sandbox.from_env(role, tmpdir, gpu_tools=gpu or role in ("ptx", "precompile"), gpu_devices=gpu,
                           writable=[profile] if profile else [])
    if not rep.active and os.environ.get(sandbox.MODE_ENV, "auto") != "off":
        print(f"kernelgym: {role} worker runs without an OS sandbox: {rep.why}", file=sys.stderr)
    return rep.label


def set_sync_schedule(mode: str, lib: Any = None) -> bool:
    """How this process's CUDA waits (``torch.cuda.synchronize``, event waits) wait: "spin" (burn a
    core), "yield", "block" (sleep until the GPU signals) or "auto" (CUDA's choice: spin while there
    are fewer active contexts than cores). Sets every visible GPU's primary-context flags, so call
    it before CUDA is initialised. Dozens of workers share one GPU and a few CPU cores: a worker
    that spins while the GPU serves the others takes a core from a worker that compiles. Returns
    False (and changes nothing) when there is no CUDA driver or no GPU. `lib`: the driver (tests)."""
    if mode not in SYNC_SCHEDULES:
        raise ValueError(f"unknown CUDA sync schedule {mode!r}; expected one of {sorted(SYNC_SCHEDULES)}")
    if lib is None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError:
            return False
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return False
    set_flags = getattr(lib, "cuDevicePrimaryCtxSetFlags_v2", None) or lib.cuDevicePrimaryCtxSetFlags
    ok = True
    for i in range(count.value):
        dev = ctypes.c_int(0)
        ok = lib.cuDeviceGet(ctypes.byref(dev), i) == 0 and set_flags(dev, SYNC_SCHEDULES[mode]) == 0 and ok
    return ok


def _device_name(role: str) -> str:
    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu (triton interpreter)"
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def _capability() -> list[int] | None:
    """The GPU's compute capability (e.g. [9, 0]); None on CPU roles."""
    import torch

    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return None
    return list(torch.cuda.get_device_capability(0))


PROFILE_ENV = "KERNELGYM_WORKER_PROFILE"


class WorkerProfiler:
    """CPU profile of a worker's requests, for benchmarks: with ``KERNELGYM_WORKER_PROFILE=DIR`` set,
    requests handled while the file ``DIR/on`` exists run under cProfile (process CPU time, so
    waits for the GPU lock or the GPU cost nothing), and the worker writes ``DIR/<role>-<pid>.prof``
    after each of them (see benchmarks/eval_throughput.py --profile-workers). A no-op otherwise."""

    def __init__(self, directory: str, role: str):
        self.directory, self.role = directory, role
        self.profile: Any = None
        self.used = False   # a profile of nothing is not written (pstats cannot read one)
        if directory:
            import cProfile

            self.profile = cProfile.Profile(time.process_time)

    @contextlib.contextmanager
    def request(self) -> Any:
        on = self.profile is not None and os.path.exists(os.path.join(self.directory, "on"))
        if on:
            self.used = True
            self.profile.enable()
        try:
            yield
        finally:
            if on:
                self.profile.disable()
                # Written after each profiled request, before its reply (nothing is profiled
                # outside one): a worker the pool replaces, as after every interpreted candidate, is
                # killed, never told to exit.
                self.dump()

    def dump(self) -> None:
        """Write the profile so far, whole (a reader never sees a half-written file)."""
        if self.profile is not None and self.used:
            path = os.path.join(self.directory, f"{self.role}-{os.getpid()}.prof")
            with contextlib.suppress(OSError):
                self.profile.dump_stats(path + ".tmp")
                os.replace(path + ".tmp", path)


def preload() -> None:
    """Import what every worker needs (torch, Triton, dynamo, the jobs' modules): in each exec'd
    worker after its confinement, or once in the template that forks workers (`template`)."""
    import torch

    # Loaded now, not lazily inside a candidate's run: importing dynamo rewraps torch.manual_seed
    # and loads code generators, which the runtime guards would rightly call patching -- but for
    # workers that never compile (LAZY_DYNAMO_ENV), whose guard tells torch's own import of it apart.
    if os.environ.get(LAZY_DYNAMO_ENV) != "1":
        import torch._dynamo
    import torch.utils._python_dispatch
    import triton  # noqa: F401

    from kernelgym.evaluation import codec, jobs  # noqa: F401

    _handlers()
    del torch


def main(argv: list[str]) -> int:
    """`python -m kernelgym.evaluation.worker ROLE FD`: a worker started by exec."""
    return serve(argv[0], int(argv[1]))


def serve(role: str, fd: int) -> int:
    """Run a worker of `role` on the socket `fd` until the parent says exit (or goes away); its
    environment must already be the role's (`pool.Role.env`). Confines the process before anything
    of a candidate runs; imports what `preload` did not."""
    _harden()
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    # Candidate prints must never reach a protocol stream; stdout joins the stderr log.
    os.dup2(2, 1)
    from kernelgym.evaluation.sandbox import SCRATCH_ENV

    tmpdir = os.environ.get(SCRATCH_ENV) or tempfile.mkdtemp(prefix=f"kernelgym-{role}-")
    confined = _confine(role, tmpdir)
    on_gpu = role not in CPU_ROLES and os.environ.get("TRITON_INTERPRET") != "1"
    if on_gpu and os.environ.get(SYNC_ENV):
        set_sync_schedule(os.environ[SYNC_ENV])   # before torch initialises CUDA
    preload()
    if on_gpu and confined != "false":
        from kernelgym.evaluation.driver_modules import keep_compiled

        keep_compiled()   # its Triton cache is fresh per candidate; launchers need not be rebuilt
    import torch
    import triton

    torch.set_num_threads(1)
    if torch.cuda.is_available() and os.environ.get("KERNELGYM_GPU_FRACTION"):
        torch.cuda.set_per_process_memory_fraction(float(os.environ["KERNELGYM_GPU_FRACTION"]))
    from kernelgym.evaluation import codec
    from kernelgym.evaluation.jobs import GpuSections

    gpu = GpuSections(conn.send_bytes, lambda: conn.recv_bytes(MAX_REQUEST_BYTES), enabled=False,
                      cuda=torch.cuda.is_available())
    state: dict[str, Any] = {"tmpdir": tmpdir, "role": role, "gpu": gpu}
    handlers = _handlers()
    conn.send_bytes(codec.encode({
        "type": "ready", "pid": os.getpid(), "tmpdir": tmpdir, "device": _device_name(role),
        "capability": _capability(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__,
                     "python": sys.version.split()[0], "os_sandbox": confined},
    }))

    def progress(phase: str) -> None:
        conn.send_bytes(codec.encode({"type": "phase", "phase": phase}))

    keep_bytes = int(float(os.environ.get("KERNELGYM_GPU_CACHE_MB", DEFAULT_GPU_CACHE_MB)) * (1 << 20))
    profiler = WorkerProfiler(os.environ.get(PROFILE_ENV, ""), role)

    while True:
        try:
            msg = codec.decode(conn.recv_bytes(MAX_REQUEST_BYTES), trust_file=True)  # from the parent
        except EOFError:
            return 0
        op = msg.get("op")
        if op == "exit":
            return 0
        t_job = time.perf_counter()
        if op in CONFINED_ROLES and confined != "false":
            from kernelgym.evaluation.triton_cache import fresh_triton_cache

            # Nothing a previous candidate wrote there is loaded; what was precompiled for this code is.
            fresh_triton_cache(tmpdir, msg.get("source") if op == "candidate" else None)
        gpu.enabled = bool(msg.get("gpu_lock")) and role not in CPU_ROLES  # the parent passed a lock for this request
        try:
            with profiler.request():
                result = handlers[op](state, msg, progress)
            if role not in CPU_ROLES:
                # Before the reply, under the request's GPU lock: a trim never overlaps a timing.
                # A poisoned context is the next request's failure to report, not this one's.
                with contextlib.suppress(Exception):
                    trim_gpu_cache(keep_bytes, hold=gpu.hold)
            gpu.release()  # a handler that failed inside a GPU section leaves it here
            spill = msg.get("spill") if isinstance(msg.get("spill"), str) else None
            blob = codec.encode({"type": "result", **result, "worker_s": time.perf_counter() - t_job}, spill=spill)
        except BaseException as exc:  # noqa: BLE001 - report, the parent decides to recycle
            from kernelgym.evaluation.jobs import describe

            gpu.mode = None  # the parent releases what this request held when the result arrives
            blob = codec.encode({"type": "result", "status": "internal_error", "error": describe(exc)})
        conn.send_bytes(blob)
        if op in ("end_candidate", "ptx") and confined != "false" and not os.environ.get(KEEP_CACHE_ENV):
            from kernelgym.evaluation.triton_cache import retire_triton_cache

            # The candidate is judged: its cache goes now, while idle, rather than in the next
            # request (removing a folder costs milliseconds on some disks).
            retire_triton_cache(tmpdir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
