"""Each confined worker's own Triton cache, and the precompiled kernels handed to it.

A process that runs candidate code may write into its Triton cache (and could plant a binary under
another kernel's key), so a confined worker (`sandbox`) compiles into a fresh folder of its scratch
space per candidate (`fresh_triton_cache`), removed once the candidate is judged
(`retire_triton_cache`). What a confined precompile worker compiled for a candidate reaches that
candidate's GPU worker as one archive per candidate's code, written by the evaluator's side
(`file_precompiled`) and unpacked into the fresh cache (never a folder another candidate wrote).
"""

from __future__ import annotations

import contextlib
import os
import shutil


def fresh_triton_cache(scratch: str, candidate: str | None = None) -> str:
    """Point Triton at a new, empty cache folder in `scratch` and delete the previous one.

    A confined process calls it before each candidate: what one candidate wrote into its cache
    (it may write there, and could plant a binary under another kernel's key) never reaches the
    next candidate's kernels. Kernels already loaded stay in memory, so nothing is compiled twice
    within one candidate's run. With `candidate` (its code), the new cache starts with the kernels
    a precompile process compiled for that same code (`file_precompiled`): only what this
    candidate could have planted in its own cache anyway."""
    prev = os.environ.get("TRITON_CACHE_DIR", "")
    n = 0
    if os.path.dirname(prev) == scratch and os.path.basename(prev).startswith("triton-cache-"):
        if os.path.lexists(prev):   # not retired (`retire_triton_cache`)
            shutil.rmtree(prev, ignore_errors=True)
        n = int(os.path.basename(prev).rsplit("-", 1)[1]) + 1
    cache = os.path.join(scratch, f"triton-cache-{n}")
    os.makedirs(cache, exist_ok=True)
    os.environ["TRITON_CACHE_DIR"] = cache
    if candidate is not None and _PRECOMPILED:
        _unpack_precompiled(os.path.join(_PRECOMPILED[0], candidate_digest(candidate) + ".tar"), cache)
    return cache


def retire_triton_cache(scratch: str) -> None:
    """Remove the cache folder `fresh_triton_cache` made last, once its candidate is judged: a
    worker calls it after its reply, while it waits for the next request, so that the next
    `fresh_triton_cache` (which removes a folder still there itself) finds nothing to remove. On
    this project's CPU box removing a folder takes ~7 ms, 2-3 % of an evaluation on the interpreter."""
    cur = os.environ.get("TRITON_CACHE_DIR", "")
    if os.path.dirname(cur) == scratch and os.path.basename(cur).startswith("triton-cache-"):
        shutil.rmtree(cur, ignore_errors=True)


# Kernels a confined precompile process compiled for a candidate reach that candidate's GPU worker
# through one archive per candidate, ``<precompiled_root()>/<candidate_digest(code)>.tar``, that
# the evaluator's side (never a process running candidate code) writes. The root sits beside the
# shared Triton cache, so the Ray pool's CPU and GPU actors of one node find the same one. A
# confined worker may open files there but not list the folder (Landlock READ_FILE without
# READ_DIR): it reads the archive of the code it was given, never another candidate's.
PRECOMPILED_SUFFIX = "-kernelgym-precompiled"
PRECOMPILED_KEEP = 256          # archives kept; the oldest go first
PRECOMPILED_MAX_BYTES = 256 << 20
_PRECOMPILED: list[str] = []    # in a confined GPU worker: the root it may read (`allow_precompiled`)


def allow_precompiled(roots: list[str]) -> None:
    """Set, in a confined GPU worker (by `sandbox.confine`), the precompiled-kernel roots it may
    read: `fresh_triton_cache` unpacks the archive of the code it is given from there."""
    _PRECOMPILED[:] = roots


def precompiled_root() -> str:
    """The folder of precompiled kernels for this process's shared Triton cache
    (``TRITON_CACHE_DIR``, else Triton's default ``~/.triton/cache``) plus `PRECOMPILED_SUFFIX`."""
    cache = os.environ.get("TRITON_CACHE_DIR") or os.path.join(
        os.environ.get("TRITON_HOME") or os.path.expanduser("~"), ".triton", "cache")
    return os.path.realpath(cache).rstrip(os.sep) + PRECOMPILED_SUFFIX


def candidate_digest(code: str) -> str:
    """The name precompiled kernels are filed under: a hash of the candidate's code."""
    import hashlib

    return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def file_precompiled(scratch: str, candidate: str, root: str | None = None) -> int:
    """Parent side of a confined precompile process whose scratch folder is `scratch`: archive the
    Triton cache it compiled `candidate` into (its newest ``triton-cache-<n>``) as
    ``<root>/<candidate_digest(candidate)>.tar``, which that candidate's confined GPU worker unpacks
    into its fresh cache (`fresh_triton_cache`). The process ran candidate code, so only regular
    files two levels down (``<key>/<file>``), never through a link, up to `PRECOMPILED_MAX_BYTES`.
    Returns the number of files filed (0 when there was no such cache: an unconfined process
    compiles into the shared cache itself)."""
    import io
    import tarfile
    import tempfile

    root = root or precompiled_root()
    cache = _newest_cache(scratch)
    if cache is None:
        return 0
    files = _regular_files(cache)
    if not files:
        return 0
    os.makedirs(root, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".filing-", suffix=".tar", dir=root)
    try:
        with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w") as tar:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(root, candidate_digest(candidate) + ".tar"))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _evict(root, PRECOMPILED_KEEP)
    return len(files)


def _unpack_precompiled(archive: str, cache: str) -> int:
    """Unpack an archive `file_precompiled` wrote into Triton cache folder `cache` (0 files when
    there is none; a hint, so a damaged one is skipped)."""
    import tarfile

    try:
        with tarfile.open(archive, mode="r") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and _is_cache_entry(m.name)]
            for m in members:
                src = tar.extractfile(m)
                if src is None:
                    continue
                os.makedirs(os.path.join(cache, os.path.dirname(m.name)), exist_ok=True)
                data = src.read()
                if os.path.basename(m.name).startswith(GROUP_PREFIX):
                    data = _regroup(data, os.path.join(cache, os.path.dirname(m.name)))
                with open(os.path.join(cache, m.name), "wb") as out:
                    out.write(data)
            return len(members)
    except (OSError, tarfile.TarError):
        return 0


# Triton's file cache names a compiled kernel's files in a group file, ``__grp__<name>.json``:
# ``{"child_paths": {file name: absolute path}}``, paths into the cache that compiled it.
GROUP_PREFIX = "__grp__"


def _regroup(data: bytes, folder: str) -> bytes:
    """A group file's paths moved to `folder` (the unpacked key's folder): left pointing into the
    precompile process's cache, a confined GPU worker's Triton opened a file there and Landlock
    refused it (a legitimate kernel judged `hack_detected` on an H100, session 16). Only names in
    the same folder are kept; a group that does not parse is dropped, so Triton compiles again."""
    import json

    try:
        group = json.loads(data)
        children = group["child_paths"]
        group["child_paths"] = {str(c): os.path.join(folder, os.path.basename(str(p))) for c, p in children.items()}
        return json.dumps(group).encode()
    except (ValueError, TypeError, KeyError, AttributeError):
        return b"{}"


def _is_cache_entry(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(p and p not in (".", "..") and "\\" not in p for p in parts)


def _newest_cache(scratch: str) -> str | None:
    best: tuple[int, str] | None = None
    with contextlib.suppress(OSError):
        for name in os.listdir(scratch):
            head, _, num = name.rpartition("-")
            if head == "triton-cache" and num.isdigit() and (best is None or int(num) > best[0]):
                best = (int(num), name)
    return os.path.join(scratch, best[1]) if best else None


def _regular_files(cache: str) -> list[tuple[str, bytes]]:
    """(``<key>/<file>``, contents) of the regular files of a Triton cache folder written by an
    untrusted process: opened without following links, at most `PRECOMPILED_MAX_BYTES` in all."""
    import stat

    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    out: list[tuple[str, bytes]] = []
    total = 0
    try:
        top = os.open(cache, flags | os.O_DIRECTORY)
    except OSError:
        return out
    try:
        for key in sorted(os.listdir(top)):
            try:
                kfd = os.open(key, flags | os.O_DIRECTORY, dir_fd=top)
            except OSError:
                continue   # a file or a link at the top: not Triton's layout
            try:
                for name in sorted(os.listdir(kfd)):
                    if not _is_cache_entry(f"{key}/{name}"):
                        continue
                    try:
                        fd = os.open(name, flags, dir_fd=kfd)
                    except OSError:
                        continue
                    with os.fdopen(fd, "rb") as fh:
                        st = os.fstat(fh.fileno())
                        if not stat.S_ISREG(st.st_mode) or total + st.st_size > PRECOMPILED_MAX_BYTES:
                            continue
                        data = fh.read(st.st_size + 1)
                    if len(data) == st.st_size:   # else it changed while read
                        out.append((f"{key}/{name}", data))
                        total += len(data)
            finally:
                os.close(kfd)
    finally:
        os.close(top)
    return out


def _evict(root: str, keep: int) -> None:
    with contextlib.suppress(OSError):
        entries = [e for e in os.scandir(root) if e.name.endswith(".tar") and not e.name.startswith(".")
                   and e.is_file(follow_symlinks=False)]
        entries.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime)
        for e in entries[:max(0, len(entries) - keep)]:
            with contextlib.suppress(OSError):
                os.unlink(e.path)
