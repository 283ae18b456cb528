"""Static guards: an AST pass over the candidate source before any of it runs.

The static layer rejects cheaply and with a precise line what no legitimate Triton candidate needs
(imports outside a small allow-list, dangerous builtins, patching, code generators, streams,
try/except fallbacks, ...). It is a first filter, not the authority: anything that slips past it
(obfuscation) must still be caught by `guards.runtime` while the candidate runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

from kernelgym.evaluation.guards import Finding
from kernelgym.pyast import parse

# Modules a candidate may import (and their submodules where marked by a trailing ".").
ALLOWED_IMPORTS = (
    "torch", "torch.nn", "torch.nn.", "torch.nn.functional", "torch.cuda",
    "triton", "triton.language", "triton.language.",  # incl. extra.libdevice / extra.cuda.libdevice
    "math", "typing", "functools", "itertools", "operator", "dataclasses", "enum", "collections",
    "collections.", "__future__",
)

# The one name a candidate may import from an otherwise forbidden module (as ``from MODULE import
# NAME``) and use with its attributes: Triton's host-side TMA tensor descriptor, a plain dataclass
# over a tensor (`triton.tools` is forbidden for its compile and disassembly tools).
DESCRIPTOR_MODULE, DESCRIPTOR_CLASS = "triton.tools.tensor_descriptor", "TensorDescriptor"
_ALLOWED_PATH = f"{DESCRIPTOR_MODULE}.{DESCRIPTOR_CLASS}"

# First component of a forbidden module -> guard name (default: forbidden_import).
_IMPORT_CATEGORY = {
    "numpy": "numpy", "scipy": "numpy", "cupy": "numpy", "jax": "numpy", "numba": "code_generation",
    "threading": "thread_started", "_thread": "thread_started", "concurrent": "thread_started",
    "asyncio": "thread_started", "multiprocessing": "process_started",
    "subprocess": "subprocess", "os": "subprocess", "pty": "subprocess", "shlex": "subprocess",
    "socket": "network", "ssl": "network", "http": "network", "urllib": "network", "requests": "network",
    "ftplib": "network", "smtplib": "network", "xmlrpc": "network", "select": "network",
    "inspect": "introspection", "gc": "introspection", "traceback": "introspection",
    "sys": "introspection", "weakref": "introspection",
    "io": "file_access", "pathlib": "file_access", "shutil": "file_access", "tempfile": "file_access",
    "pickle": "file_access", "glob": "file_access", "mmap": "file_access", "sqlite3": "file_access",
    "importlib": "code_generation", "types": "code_generation", "code": "code_generation",
    "codeop": "code_generation", "marshal": "code_generation", "builtins": "patching",
    "time": "patching", "timeit": "patching", "ctypes": "forbidden_call", "cffi": "forbidden_call",
    "kernelgym": "patching", "signal": "forbidden_call",
}

# Dotted-name prefixes (after resolving import aliases) that are forbidden wherever they appear.
_FORBIDDEN_PATHS = (
    ("torch.compile", "code_generation"), ("torch.jit", "code_generation"),
    ("torch._dynamo", "code_generation"), ("torch._inductor", "code_generation"),
    ("torch.export", "code_generation"), ("torch.fx", "code_generation"),
    ("torch.utils.cpp_extension", "code_generation"), ("torch.library", "code_generation"),
    ("torch._C", "introspection"), ("torch.ops", "torch_compute"),
    ("triton.compile", "code_generation"), ("triton.runtime", "code_generation"),
    ("triton.compiler", "code_generation"), ("triton.tools", "code_generation"),
    ("triton.testing", "patching"), ("triton.knobs", "patching"), ("triton.backends", "code_generation"),
    ("torch.cuda.Stream", "side_stream"), ("torch.cuda.stream", "side_stream"),
    ("torch.cuda.streams", "side_stream"), ("torch.cuda.ExternalStream", "side_stream"),
    ("torch.cuda.set_stream", "side_stream"), ("torch.cuda.StreamContext", "side_stream"),
    ("torch.cuda.graph", "side_stream"), ("torch.cuda.CUDAGraph", "side_stream"),
    ("torch.cuda.graphs", "side_stream"), ("torch.Stream", "side_stream"),
    ("torch.cuda.is_current_stream_capturing", "timing_probe"),
    ("torch.multiprocessing", "process_started"), ("torch.distributed", "network"),
    ("torch.save", "file_access"), ("torch.load", "file_access"), ("torch.hub", "network"),
    ("torch.from_file", "file_access"), ("torch.utils", "forbidden_import"),
    ("torch.from_numpy", "numpy"),
)

# Attribute names that smuggle a forbidden module out of an allowed one (torch.os, torch.sys, ...).
_SMUGGLED = {
    "os": "subprocess", "sys": "introspection", "subprocess": "subprocess", "ctypes": "forbidden_call",
    "np": "numpy", "numpy": "numpy", "builtins": "patching", "importlib": "code_generation",
    "threading": "thread_started", "socket": "network", "gc": "introspection", "inspect": "introspection",
    "pickle": "file_access", "shutil": "file_access", "_thread": "thread_started",
    "multiprocessing": "process_started",
}

_BUILTIN_CALLS = {
    "exec": "code_generation", "eval": "code_generation", "compile": "code_generation",
    "__import__": "code_generation", "open": "file_access", "globals": "introspection",
    "locals": "introspection", "vars": "introspection", "dir": "introspection", "setattr": "forbidden_call",
    "delattr": "forbidden_call", "breakpoint": "forbidden_call", "input": "forbidden_call",
    "exit": "early_exit", "quit": "early_exit", "memoryview": "forbidden_call", "id": "introspection",
    "SystemExit": "early_exit", "KeyboardInterrupt": "early_exit", "GeneratorExit": "early_exit",
    "help": "forbidden_call", "copyright": "forbidden_call", "credits": "forbidden_call",
    "license": "forbidden_call",
}

_DUNDER_OK = {
    "__init__", "__name__", "__class__", "__doc__", "__qualname__", "__call__", "__len__", "__getitem__",
    "__enter__", "__exit__", "__repr__", "__post_init__",
}

# Unambiguous torch compute entry points, flagged statically inside forward() in strict mode.
_TORCH_COMPUTE = {
    "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "conv1d", "conv2d", "conv3d", "softmax",
    "log_softmax", "relu", "sigmoid", "tanh", "exp", "log", "sum", "mean", "max", "min", "amax", "amin",
    "add", "sub", "mul", "div", "where", "cumsum", "cumprod", "sort", "topk", "layer_norm", "matrix_power",
    "sqrt", "rsqrt", "pow", "abs", "clamp", "gelu", "argmax", "argmin", "prod", "norm", "var", "std",
    "maximum", "minimum", "tensordot", "outer", "addcmul", "addcdiv", "lerp", "logsumexp", "cross", "dot",
}


def check_source(source: str, mode: str = "strict") -> list[Finding]:
    """AST checks before anything runs. Empty list = passes; a syntax error yields no finding
    (the format check reports it)."""
    try:
        tree = parse(source)
    except SyntaxError:
        return []
    checker = _Checker(mode)
    checker.run(tree)
    return checker.findings


def _allowed(module: str) -> bool:
    for a in ALLOWED_IMPORTS:
        if a.endswith(".") and module.startswith(a):
            return True
        if module == a:
            return True
    return False


def _category(module: str) -> str:
    root = module.split(".")[0]
    if root in ("torch", "triton"):
        for prefix, name in _FORBIDDEN_PATHS:
            if module == prefix or module.startswith(prefix + "."):
                return name
    return _IMPORT_CATEGORY.get(root, "forbidden_import")


class _Checker(ast.NodeVisitor):
    def __init__(self, mode: str):
        self.mode = mode
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, str, int | None]] = set()
        self.aliases: dict[str, str] = {}  # local name -> dotted path of what it is bound to
        self.bound: set[str] = set()       # every name the module binds (shadows builtins)
        self.jit_depth = 0
        self.forward_depth = 0
        self.kernels = 0

    def add(self, name: str, detail: str, node: ast.AST | None) -> None:
        line = getattr(node, "lineno", None)
        key = (name, detail, line)
        if key not in self._seen:
            self._seen.add(key)
            self.findings.append(Finding(name, detail, line))

    def run(self, tree: ast.Module) -> None:
        self._collect(tree)
        self.visit(tree)
        if self.kernels == 0:
            self.add("no_triton_kernel", "no @triton.jit function is defined", None)

    # -- pre-pass: names bound anywhere, and import aliases
    def _collect(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    local = a.asname or a.name.split(".")[0]
                    self.aliases[local] = a.name if a.asname else a.name.split(".")[0]
                    self.bound.add(local)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                    self.bound.add(a.asname or a.name)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.bound.add(node.name)
            elif isinstance(node, ast.arg):
                self.bound.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                self.bound.add(node.id)

    def dotted(self, node: ast.AST) -> str | None:
        """Dotted path of a Name/Attribute chain with the root resolved through import aliases."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        root = self.aliases.get(node.id)
        if root is None:
            return None
        return ".".join([root, *reversed(parts)])

    # -- imports
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._check_import(a.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.add("forbidden_import", "relative import", node)
            return
        mod = node.module or ""
        if mod == DESCRIPTOR_MODULE and all(a.name == DESCRIPTOR_CLASS for a in node.names):
            return   # the descriptor class alone (see DESCRIPTOR_MODULE)
        self._check_import(mod, node)
        if _allowed(mod):
            for a in node.names:
                if a.name == "*":
                    self.add("forbidden_import", f"from {mod} import *", node)
                    continue
                full = f"{mod}.{a.name}"
                self._check_path(full, node)
                if a.name in _SMUGGLED:
                    self.add(_SMUGGLED[a.name], f"{full} smuggles a forbidden module", node)

    def _check_import(self, mod: str, node: ast.AST) -> None:
        if not _allowed(mod):
            self.add(_category(mod), f"import of {mod!r} is not allowed", node)
        else:
            self._check_path(mod, node)

    def _check_path(self, path: str, node: ast.AST) -> None:
        if path == _ALLOWED_PATH or path.startswith(_ALLOWED_PATH + "."):
            return   # TensorDescriptor, TensorDescriptor.from_tensor
        for prefix, name in _FORBIDDEN_PATHS:
            if path == prefix or path.startswith(prefix + "."):
                if name == "torch_compute" and self.mode != "strict":
                    return  # torch.ops.aten.* is plain torch, which lenient mode allows
                self.add(name, f"use of {prefix}", node)
                return

    # -- definitions
    def _is_jit_decorator(self, dec: ast.AST) -> bool:
        target = dec.func if isinstance(dec, ast.Call) else dec
        path = self.dotted(target) or ""
        return path in ("triton.jit", "triton.autotune", "triton.heuristics")

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.add("forbidden_call", "async functions are not allowed", node)
        self._visit_function(node)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        is_jit = any(self._is_jit_decorator(d) for d in node.decorator_list)
        for d in node.decorator_list:
            self.visit(d)
        self.kernels += is_jit
        self.jit_depth += is_jit
        is_fwd = node.name == "forward"
        self.forward_depth += is_fwd
        for child in [node.args, *node.body]:
            self.visit(child)
        self.jit_depth -= is_jit
        self.forward_depth -= is_fwd

    # -- control flow
    def visit_Try(self, node: ast.Try) -> None:
        if node.handlers and not self._import_fallback(node):
            self.add("try_except", "try/except is only allowed around imports (except ImportError)", node)
        self.generic_visit(node)

    visit_TryStar = visit_Try

    def _import_fallback(self, node: ast.Try) -> bool:
        def plain(body: Iterable[ast.stmt]) -> bool:
            return all(isinstance(s, (ast.Import, ast.ImportFrom, ast.Pass, ast.Assign)) for s in body)

        def import_error(h: ast.ExceptHandler) -> bool:
            types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
            return h.type is not None and all(
                isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError") for t in types)

        return (plain(node.body) and any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in node.body)
                and all(import_error(h) and plain(h.body) for h in node.handlers)
                and plain(node.orelse) and plain(node.finalbody))

    def visit_Raise(self, node: ast.Raise) -> None:
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(exc, ast.Name) and exc.id in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
            self.add("early_exit", f"raise {exc.id}", node)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        for n in node.names:
            if n.startswith("__"):
                self.add("introspection", f"global {n}", node)

    # -- names and attributes
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _BUILTIN_CALLS and node.id not in self.bound:
            self.add(_BUILTIN_CALLS[node.id], f"use of builtin {node.id}", node)
        elif node.id.startswith("__") and node.id.endswith("__") and node.id not in ("__name__", "__file__"):
            self.add("introspection", f"access to {node.id}", node)
        if self.jit_depth and isinstance(node.ctx, ast.Load):
            path = self.aliases.get(node.id, "")
            if path.split(".")[0] == "torch":
                self.add("torch_compute", f"torch used inside a @triton.jit kernel ({node.id})", node)
            elif path.split(".")[0] == "numpy":
                self.add("numpy", f"numpy used inside a @triton.jit kernel ({node.id})", node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        if attr.startswith("__") and attr.endswith("__") and attr not in _DUNDER_OK:
            self.add("introspection", f"access to dunder attribute .{attr}", node)
        if attr in ("numpy", "tolist") and not self.dotted(node):
            self.add("numpy", f".{attr}() moves compute out of Triton", node)
        if attr in ("exit", "_exit", "abort") and (self.dotted(node) or "").split(".")[0] in ("sys", "os", "torch"):
            self.add("early_exit", f"call of {self.dotted(node)}", node)
        if attr in ("f_back", "f_globals", "f_locals", "tb_frame", "gi_frame", "cr_frame", "f_builtins"):
            self.add("introspection", f"frame access .{attr}", node)
        path = self.dotted(node)
        if path is not None:
            self._check_path(path, node)
            for seg in path.split(".")[1:]:
                if seg in _SMUGGLED:
                    self.add(_SMUGGLED[seg], f"{path} reaches a forbidden module", node)
                    break
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        fn = node.func
        if isinstance(fn, ast.Name) and fn.id == "getattr" and "getattr" not in self.bound:
            name = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                self.add("forbidden_call", "getattr with a non-literal attribute name", node)
            elif name.value.startswith("__"):
                self.add("introspection", f"getattr(..., {name.value!r})", node)
            elif name.value in _SMUGGLED:
                self.add(_SMUGGLED[name.value], f"getattr(..., {name.value!r}) reaches a forbidden module", node)
        if self.forward_depth and self.mode == "strict":
            path = self.dotted(fn) or ""
            parts = path.split(".")
            if path.startswith("torch.nn.functional.") or (
                    len(parts) == 2 and parts[0] == "torch" and parts[1] in _TORCH_COMPUTE):
                self.add("torch_compute", f"{path}(...) computes in torch inside forward (strict mode)", node)
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.MatMult) and self.forward_depth and self.mode == "strict":
            self.add("torch_compute", "the @ operator computes in torch inside forward (strict mode)", node)
        self.generic_visit(node)

    # -- stores: patching of imported modules and their members
    def _check_store(self, target: ast.AST, node: ast.AST) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._check_store(t, node)
            return
        if isinstance(target, ast.Starred):
            self._check_store(target.value, node)
            return
        if isinstance(target, ast.Subscript):
            target = target.value
        if isinstance(target, ast.Attribute):
            path = self.dotted(target)
            if path is not None:
                self.add("patching", f"assignment to {path}", node)
            elif target.attr.startswith("__") and target.attr.endswith("__"):
                self.add("patching", f"assignment to dunder attribute .{target.attr}", node)
        elif isinstance(target, ast.Name) and target.id in ("__builtins__", "__import__"):
            self.add("patching", f"assignment to {target.id}", node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._check_store(t, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_store(node.target, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_store(node.target, node)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._check_store(t, node)
        self.generic_visit(node)
