"""Messages between the parent and worker processes: a JSON header plus raw tensor buffers.

Nothing here unpickles: a worker that ran candidate code may send anything, so the parent only
parses JSON and reinterprets byte buffers as tensors of a whitelisted dtype.

Wire format: ``b"KGC1" + u64 header length + header JSON + concatenated buffers``. Values are
JSON scalars, lists, ``{"__tuple__": [...]}``, ``{"__dict__": [[key, value], ...]}``,
``{"__tensor__": i, "dtype": name, "shape": [...]}`` (buffer i) and ``{"__dtype__": name}``.

Tensor buffers may instead live in a side file (``encode(..., spill=path)``: header ``"spill":
true``), so that a candidate's outputs go from its worker to a reference worker through a file the
parent named, and the parent relays a few hundred bytes of JSON instead of copying every output
(``"file": path`` in the header of the relayed message). A reader only ever opens a file its
caller names (`decode`'s ``spill``) or, with ``trust_file``, the one a trusted sender (the
parent) names: a worker cannot make the parent read a file of its choosing.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from typing import Any

MAGIC = b"KGC1"
MAX_HEADER_BYTES = 64 << 20
MAX_DEPTH = 32

# The only dtypes that travel; anything else is refused rather than guessed.
_DTYPE_NAMES = (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex64", "complex128",
)

# Bytes per element of each dtype, so that relaying raw tensors (the parent's job) needs no torch.
ITEMSIZES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16}


class CodecError(ValueError):
    """A message that cannot be encoded or is malformed."""


class RawTensor:
    """A tensor left as bytes by `decode(..., raw_tensors=True)`: relayed by `encode` without copying
    into a torch tensor first (the parent passes candidate outputs on to a reference worker)."""

    __slots__ = ("data", "dtype", "file", "offset", "shape", "size")

    def __init__(self, dtype: str, shape: list[int], data: memoryview | None, file: str | None = None,
                 offset: int = 0, size: int = 0):
        self.dtype, self.shape, self.data = dtype, list(shape), data
        # or, for a spilled buffer, where it lies: `size` bytes at `offset` of `file`
        self.file, self.offset, self.size = file, offset, size

    @property
    def nbytes(self) -> int:
        return len(self.data) if self.data is not None else self.size

    def __repr__(self) -> str:
        return f"RawTensor({self.dtype}, {self.shape})"


def _dtypes() -> dict[str, Any]:
    import torch

    return {name: getattr(torch, name) for name in _DTYPE_NAMES}


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise CodecError(f"unsupported tensor dtype {dtype}")
    return name


def encode(obj: Any, spill: str | None = None) -> bytes:
    """Serialize `obj` (JSON values, tuples, dicts, torch tensors and dtypes) to bytes.

    spill: write the tensors' buffers to this new file instead of the message (header ``"spill"``).
    A message that relays spilled `RawTensor`s names their file in its header (``"file"``); it
    cannot also carry inline buffers or buffers of another file."""
    buffers: list[Any] = []
    relayed: set[str] = set()

    def enc(x: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise CodecError("value nested too deeply")
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, (list, tuple)) and type(x).__name__ == "Size":
            return {"__tuple__": [int(v) for v in x]}
        if isinstance(x, list):
            return [enc(v, depth + 1) for v in x]
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, depth + 1) for v in x]}
        if isinstance(x, dict):
            return {"__dict__": [[enc(k, depth + 1), enc(v, depth + 1)] for k, v in x.items()]}
        mod = type(x).__module__
        if mod.startswith("torch"):
            import torch

            if isinstance(x, torch.dtype):
                return {"__dtype__": _dtype_name(x)}
            if isinstance(x, torch.Tensor):
                name = _dtype_name(x.dtype)
                t = x.detach().to("cpu").contiguous()
                # bytes through a uint8 view: works for bf16, which numpy cannot hold.
                raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
                buffers.append(raw if spill else bytes(raw))
                return {"__tensor__": len(buffers) - 1, "dtype": name, "shape": list(t.shape)}
        if isinstance(x, RawTensor):
            if x.file is not None:
                relayed.add(x.file)
                buffers.append((x.offset, x.size))
            else:
                buffers.append(x.data)
            return {"__tensor__": len(buffers) - 1, "dtype": _dtype_name(x.dtype), "shape": list(x.shape)}
        if mod == "numpy" and hasattr(x, "item") and getattr(x, "shape", None) == ():
            return enc(x.item(), depth)
        raise CodecError(f"cannot encode value of type {type(x).__name__}")

    tree = enc(obj, 0)
    head: dict[str, Any] = {"v": tree}
    if relayed:
        if len(relayed) > 1 or spill or not all(isinstance(b, tuple) for b in buffers):
            raise CodecError("a message can relay the buffers of one spill file and nothing else")
        head["bufs"], head["file"], buffers = [list(b) for b in buffers], relayed.pop(), []
    else:
        offsets, pos = [], 0
        for b in buffers:
            n = memoryview(b).nbytes
            offsets.append([pos, n])
            pos += n
        head["bufs"] = offsets
        if spill and buffers:
            _write_spill(spill, buffers)
            head["spill"], buffers = True, []
    header = json.dumps(head, allow_nan=True).encode()
    return b"".join([MAGIC, struct.pack("<Q", len(header)), header, *buffers])


def _write_spill(path: str, buffers: list[Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        for b in buffers:
            fh.write(b)


def decode(blob: bytes, raw_tensors: bool = False, spill: str | None = None, trust_file: bool = False,
           max_spill_bytes: int | None = None) -> Any:
    """Inverse of `encode`; raises `CodecError` on anything malformed (never executes code).

    With `raw_tensors`, tensors come back as `RawTensor` views of `blob` (checked, not copied), or
    references into the spill file. spill: the file a ``"spill"`` message's buffers are in (the
    one the caller told the sender to write; none: such a message is refused). trust_file: read
    the file a relayed message names (only for messages from the parent). max_spill_bytes: a cap
    on the spilled buffers' total (None: only the file's size bounds them; each buffer must lie
    inside the file, and a tensor's bytes must match its shape)."""
    if len(blob) < 12 or blob[:4] != MAGIC:
        raise CodecError("not a kernelgym message")
    (hlen,) = struct.unpack("<Q", blob[4:12])
    if hlen > MAX_HEADER_BYTES or 12 + hlen > len(blob):
        raise CodecError("bad header length")
    try:
        header = json.loads(blob[12:12 + hlen])
        tree, bufs = header["v"], header["bufs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CodecError(f"bad header: {exc}") from None
    data: Any = memoryview(blob)[12 + hlen:]
    file = None
    if header.get("spill"):
        if not spill:
            raise CodecError("message buffers are in a spill file, but none was named for it")
        file = spill
    elif "file" in header:
        if not trust_file or not isinstance(header["file"], str):
            raise CodecError("message names a buffer file, but its sender is not trusted to")
        file = header["file"]
    if file is not None:
        data = _SpillFile(file, bufs, max_spill_bytes)
    dtypes: dict[str, Any] | None = None

    def tensor(node: dict) -> Any:
        nonlocal dtypes
        try:
            idx, name, shape = int(node["__tensor__"]), node["dtype"], [int(s) for s in node["shape"]]
            start, n = (int(v) for v in bufs[idx])
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise CodecError(f"bad tensor node: {exc}") from None
        if name not in ITEMSIZES or any(s < 0 for s in shape) or start < 0 or start + n > len(data):
            raise CodecError("bad tensor node")
        numel = 1
        for s in shape:
            numel *= s
        if numel * ITEMSIZES[name] != n:
            raise CodecError("tensor buffer size does not match its shape")
        if raw_tensors:
            if isinstance(data, _SpillFile):
                return RawTensor(name, shape, None, file=data.path, offset=start, size=n)
            return RawTensor(name, shape, data[start:start + n])
        import torch

        dtypes = dtypes or _dtypes()
        dtype = dtypes[name]
        if n == 0:
            return torch.empty(shape, dtype=dtype)
        raw = data.read(start, n) if isinstance(data, _SpillFile) else bytearray(data[start:start + n])
        return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)

    def dec(x: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise CodecError("value nested too deeply")
        if isinstance(x, list):
            return [dec(v, depth + 1) for v in x]
        if not isinstance(x, dict):
            return x
        if "__tensor__" in x:
            return tensor(x)
        if "__tuple__" in x:
            return tuple(dec(v, depth + 1) for v in x["__tuple__"])
        if "__dict__" in x:
            out = {}
            for pair in x["__dict__"]:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise CodecError("bad dict entry")
                key = dec(pair[0], depth + 1)
                if isinstance(key, (list, dict)):
                    raise CodecError("unhashable dict key")
                out[key] = dec(pair[1], depth + 1)
            return out
        if "__dtype__" in x:
            import torch

            name = x["__dtype__"]
            if name not in _DTYPE_NAMES:
                raise CodecError(f"unknown dtype {name!r}")
            return getattr(torch, name)
        raise CodecError("unknown node")

    return dec(tree, 0)


class _SpillFile:
    """The buffers of a spilled message: checked against the file's size up front, read on demand."""

    def __init__(self, path: str, bufs: Any, max_bytes: int | None):
        self.path = path
        try:
            spans = [(int(a), int(n)) for a, n in bufs]
        except (TypeError, ValueError) as exc:
            raise CodecError(f"bad buffer table: {exc}") from None
        if any(a < 0 or n < 0 for a, n in spans):
            raise CodecError("bad buffer table for the spill file: a negative offset or size")
        # No fixed cap by default: a file of several GiB (3 trials of a 1.5 GiB output) is a
        # legitimate KernelBench message, and the file's size bounds what can be read.
        total = sum(n for _, n in spans)
        if max_bytes is not None and total > max_bytes:
            raise CodecError(f"bad buffer table for the spill file: {total} bytes of buffers, over the "
                             f"{max_bytes}-byte cap")
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            raise CodecError(f"spill file unreadable: {exc}") from None
        if not stat.S_ISREG(st.st_mode) or any(a + n > st.st_size for a, n in spans):
            raise CodecError("spill file is not a regular file holding every buffer")
        self.size = st.st_size

    def __len__(self) -> int:
        return self.size

    def read(self, start: int, n: int) -> bytearray:
        out = bytearray(n)
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            view, got = memoryview(out), 0
            while got < n:
                k = os.preadv(fd, [view[got:]], start + got)
                if k <= 0:
                    raise CodecError("spill file shorter than its buffer table")
                got += k
        finally:
            os.close(fd)
        return out
