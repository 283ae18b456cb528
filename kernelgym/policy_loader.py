"""Which policy a spec names, and how to build it with the run's options.

Policies live outside the package (``policies/``, which imports kernelgym, never the reverse), so
they are resolved at run time: first through the ``kernelgym.policies`` entry-point group
(declared in pyproject.toml: compiler, search, llm), then as a ``module:attr`` spec (for running
from ``PYTHONPATH`` without installing, where entry points do not exist). The built-in names fall
back to their ``policies.*`` specs when their entry point is absent for the same reason.

Policies are built from whatever of the run's options their constructor accepts (``mode``,
``backend``, ``evaluator``, ``budget_evals``, ``budget_s``, ``model``, ``base_url``, ``seed``);
a constructor taking ``base`` (the search policy) gets the policy named by ``--base``.
"""

from __future__ import annotations

import inspect
from importlib import import_module, metadata
from typing import Any

ENTRY_POINT_GROUP = "kernelgym.policies"
# Where the built-in policies live when their entry points are not installed (PYTHONPATH runs).
BUILTIN_POLICIES = {
    "compiler": "policies.compiler:CompilerPolicy",
    "search": "policies.search:SearchPolicy",
    "llm": "policies.llm:OpenAIPolicy",
}


class PolicyNotFound(LookupError):
    """A policy spec that names no entry point and no importable ``module:attr``."""


class RunError(RuntimeError):
    """A run that cannot start (bad arguments, a policy that cannot be built, output directory in
    the way, ...). Defined here, below the runner, which raises it too."""


def _entry_point(name: str) -> Any | None:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python < 3.10 API; kept for odd environments
        eps = metadata.entry_points().get(ENTRY_POINT_GROUP, [])  # type: ignore[attr-defined]
    return next((ep for ep in eps if ep.name == name), None)


def _load_spec(spec: str, what: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PolicyNotFound(f"{what}: expected 'module:attr', got {spec!r}")
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise PolicyNotFound(f"{what}: module {module_name!r} not found (is it on PYTHONPATH, "
                                 f"or installed?)") from None
        raise PolicyNotFound(f"{what}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise PolicyNotFound(f"{what}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PolicyNotFound(f"{what}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def resolve_policy(spec: str) -> Any:
    """The policy class / factory / instance that `spec` names.

    `spec` is an entry-point name of the ``kernelgym.policies`` group (compiler, search, llm, or
    any a plugin declares) or ``module:attr``. Raises `PolicyNotFound` saying what was not found.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PolicyNotFound(f"policy spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if ":" in spec:
        return _load_spec(spec, f"policy {spec!r}")
    ep = _entry_point(spec)
    if ep is not None:
        try:
            return ep.load()
        except Exception as exc:
            raise PolicyNotFound(f"policy {spec!r}: entry point {ep.value!r} failed to load: "
                                 f"{type(exc).__name__}: {exc}") from exc
    if spec in BUILTIN_POLICIES:
        return _load_spec(BUILTIN_POLICIES[spec], f"policy {spec!r} ({BUILTIN_POLICIES[spec]})")
    known = sorted({*BUILTIN_POLICIES, *(ep.name for ep in _entry_points())})
    raise PolicyNotFound(f"unknown policy {spec!r}: no entry point of that name in group {ENTRY_POINT_GROUP!r} "
                         f"(known: {', '.join(known)}); give a 'module:attr' spec for others")


def _entry_points() -> list[Any]:
    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except TypeError:
        return list(metadata.entry_points().get(ENTRY_POINT_GROUP, []))  # type: ignore[attr-defined]


def _accepted(obj: Any) -> tuple[set[str], set[str]]:
    """(accepted keyword names, required ones) of a policy constructor or factory.

    A class whose ``__init__`` forwards ``**kwargs`` to its parent also accepts the parent's
    named parameters (e.g. an LLM backend passing ``mode`` and ``seed`` on to its base class).
    """
    names: set[str] = set()
    required: set[str] = set()
    targets = [c.__init__ for c in inspect.getmro(obj) if "__init__" in vars(c)] if inspect.isclass(obj) else [obj]
    for i, fn in enumerate(targets):
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            break
        for p in params.values():
            if p.name == "self" or p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            names.add(p.name)
            if i == 0 and p.default is inspect.Parameter.empty:
                required.add(p.name)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break
    return names, required


def build_policy(spec: str, base: str | None = "compiler", **options: Any) -> Any:
    """Resolve `spec` and construct it with the `options` its constructor accepts.

    Options left as None are not passed (the policy's defaults apply). A constructor that takes
    ``base`` gets ``build_policy(base, None, **options)``. `model` and `base_url` set but taken by
    no policy in the chain raise `RunError` rather than being silently dropped.
    """
    used: set[str] = set()
    policy = _build(spec, base, options, used)
    for explicit in ("model", "base_url"):
        if options.get(explicit) is not None and explicit not in used:
            raise RunError(f"policy {spec!r} takes no --{explicit.replace('_', '-')} option")
    return policy


def _build(spec: str, base: str | None, options: dict[str, Any], used: set[str]) -> Any:
    obj = resolve_policy(spec)
    if not inspect.isclass(obj) and callable(getattr(obj, "propose", None)):
        return obj   # already a policy instance
    if not callable(obj):
        raise RunError(f"policy {spec!r} resolved to a {type(obj).__name__}, which is neither a policy class, "
                       "a factory nor an object with propose()")
    if inspect.isabstract(obj):
        raise RunError(f"policy {spec!r} is the abstract {obj.__name__}; name a concrete class (module:attr)")
    names, required = _accepted(obj)
    kwargs = {k: v for k, v in options.items() if v is not None and k in names}
    if "base" in names:
        if base is None:
            raise RunError(f"policy {spec!r} needs a base policy (--base)")
        kwargs["base"] = _build(base, None, options, used)
    missing = sorted(required - set(kwargs))
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise RunError(f"policy {spec!r} needs {flags}")
    try:
        policy = obj(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RunError(f"cannot construct policy {spec!r}: {exc}") from exc
    used.update(kwargs)
    if not callable(getattr(policy, "propose", None)):
        raise RunError(f"policy {spec!r} built a {type(policy).__name__} without propose(task, n, history)")
    return policy
