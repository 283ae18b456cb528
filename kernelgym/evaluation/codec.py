"""Messages between the parent and worker processes: a JSON header plus raw tensor buffers.

Nothing here unpickles: a worker that ran candidate code may send anything, so the parent only
parses JSON and reinterprets byte buffers as tensors of a whitelisted dtype.

Wire format: ``b"KGC1" + u64 header length + header JSON + concatenated buffers``. Values are
JSON scalars, lists, ``{"__tuple__": [...]}``, ``{"__dict__": [[key, value], ...]}``,
``{"__tensor__": i, "dtype": name, "shape": [...]}`` (buffer i) and ``{"__dtype__": name}``.
"""

from __future__ import annotations

import json
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


class CodecError(ValueError):
    """A message that cannot be encoded or is malformed."""


class RawTensor:
    """A tensor left as bytes by `decode(..., raw_tensors=True)`: relayed by `encode` without copying
    into a torch tensor first (the parent passes candidate outputs on to a reference worker)."""

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, dtype: str, shape: list[int], data: memoryview):
        self.dtype, self.shape, self.data = dtype, list(shape), data

    @property
    def nbytes(self) -> int:
        return len(self.data)

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


def encode(obj: Any) -> bytes:
    """Serialize `obj` (JSON values, tuples, dicts, torch tensors and dtypes) to bytes."""
    buffers: list[bytes] = []

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
                raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
                buffers.append(raw)
                return {"__tensor__": len(buffers) - 1, "dtype": name, "shape": list(t.shape)}
        if isinstance(x, RawTensor):
            buffers.append(x.data)
            return {"__tensor__": len(buffers) - 1, "dtype": _dtype_name(x.dtype), "shape": list(x.shape)}
        if mod == "numpy" and hasattr(x, "item") and getattr(x, "shape", None) == ():
            return enc(x.item(), depth)
        raise CodecError(f"cannot encode value of type {type(x).__name__}")

    tree = enc(obj, 0)
    offsets, pos = [], 0
    for b in buffers:
        offsets.append([pos, len(b)])
        pos += len(b)
    header = json.dumps({"v": tree, "bufs": offsets}, allow_nan=True).encode()
    return b"".join([MAGIC, struct.pack("<Q", len(header)), header, *buffers])


def decode(blob: bytes, raw_tensors: bool = False) -> Any:
    """Inverse of `encode`; raises `CodecError` on anything malformed (never executes code).

    With `raw_tensors`, tensors come back as `RawTensor` views of `blob` (checked, not copied)."""
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
    data = memoryview(blob)[12 + hlen:]
    dtypes: dict[str, Any] | None = None

    def tensor(node: dict) -> Any:
        nonlocal dtypes
        import torch

        dtypes = dtypes or _dtypes()
        try:
            idx, name, shape = int(node["__tensor__"]), node["dtype"], [int(s) for s in node["shape"]]
            start, n = (int(v) for v in bufs[idx])
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise CodecError(f"bad tensor node: {exc}") from None
        if name not in dtypes or any(s < 0 for s in shape) or start < 0 or start + n > len(data):
            raise CodecError("bad tensor node")
        dtype = dtypes[name]
        numel = 1
        for s in shape:
            numel *= s
        if numel * dtype.itemsize != n:
            raise CodecError("tensor buffer size does not match its shape")
        if raw_tensors:
            return RawTensor(name, shape, data[start:start + n])
        if n == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(data[start:start + n]), dtype=torch.uint8).view(dtype).reshape(shape)

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
