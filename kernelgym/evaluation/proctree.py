"""What /proc says about a worker: its process tree, resident memory, CPU time; the host's memory.

Used by the parent to poll each worker's memory against its limit, to kill a worker with every
descendant that left its process group, and by benchmarks to account CPU time per role.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")


def meminfo_bytes(field: str = "MemAvailable") -> int | None:
    """A /proc/meminfo field in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_memory_limit(base: int | None, task_bytes: int | None, available: int | None,
                      multiple: float = 2.0) -> int | None:
    """A worker's resident-memory limit for one task: `base` (what the worker needs for itself:
    torch, CUDA, Inductor; the configured limit) plus `multiple` x the task's host bytes, capped
    by `available` (what the machine can still give this worker); never below `base`. None (no
    limit) stays None; an unknown task size or machine leaves the part it would set out."""
    if base is None:
        return None
    limit = base + int(multiple * max(0, task_bytes or 0))
    if available is not None:
        limit = min(limit, max(base, int(available)))
    return int(limit)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc)."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += _children(p)
    return seen


def _tree_sum(pid: int, read: Callable[[int], int]) -> int:
    """`read(p)` summed over `pid` and its live descendants (what cannot be read counts 0)."""
    total = 0
    for p in process_tree(pid):
        try:
            total += read(p)
        except (OSError, ValueError, IndexError):
            pass
    return total


def _cpu_ticks(p: int) -> int:
    fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15])   # utime stime cutime cstime


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, with reaped children's, such as compiler subprocesses) used so
    far by `pid` and its live descendants (Linux /proc; 0 for what cannot be read)."""
    return _tree_sum(pid, _cpu_ticks) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident bytes of one process (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def tree_rss_bytes(pid: int) -> int:
    """Resident bytes of `pid` and its live descendants."""
    return _tree_sum(pid, rss_bytes)


_ROLLUP = {"Pss_Anon": "anon", "Pss_Shmem": "shmem", "Pss_File": "file"}


def memory_use(pid: int) -> dict[str, int]:
    """One process's proportional memory (/proc/PID/smaps_rollup), in bytes: ``anon`` and ``shmem``
    (what it allocated), ``file`` (mapped files: shared libraries, page cache the kernel can drop),
    and ``charged`` = anon + shmem, the part a memory limit charges it for. A page it shares (a
    worker forked from a template shares the template's) counts divided among the sharers.
    Where smaps_rollup cannot be read (older kernels, no permission), ``charged`` is the resident
    size and the parts are absent; {} for a process that is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in _ROLLUP:
                    out[_ROLLUP[key]] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if "anon" in out and "shmem" in out:
        out["charged"] = out["anon"] + out["shmem"]
        return out
    rss = rss_bytes(pid)
    return {"charged": rss} if rss else {}


def tree_memory(pid: int) -> tuple[int, str]:
    """What `pid` and its live descendants are charged for (`memory_use`), and a short account of
    it per process (``pid: anon A MB, shmem S MB, file F MB``), for the message that names a
    worker killed over its memory limit."""
    total, parts = 0, []
    for p in process_tree(pid):
        use = memory_use(p)
        if not use:
            continue
        total += use["charged"]
        mb = {k: f"{v / 2**20:.0f}" for k, v in use.items()}
        parts.append(f"{p}: anon {mb['anon']} MB, shmem {mb['shmem']} MB, file {mb['file']} MB"
                     if "anon" in use else f"{p}: resident {mb['charged']} MB")
    return total, "; ".join(parts)
