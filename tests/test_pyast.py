"""kernelgym.pyast.parse: thread-safe ast.parse on CPython 3.11 (gh-106905)."""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor

import pytest

from kernelgym import pyast


def test_spurious_recursion_mismatch_is_retried(monkeypatch):
    real, calls = ast.parse, []

    def flaky(source, filename="<unknown>"):
        calls.append(filename)
        if len(calls) < 3:
            raise SystemError("AST constructor recursion depth mismatch (before=12, after=7)")
        return real(source, filename=filename)

    monkeypatch.setattr(pyast.ast, "parse", flaky)
    assert isinstance(pyast.parse("x = 1", "<cand>"), ast.Module) and calls == ["<cand>"] * 3


def test_other_errors_are_not_retried(monkeypatch):
    calls = []

    def broken(source, filename="<unknown>"):
        calls.append(1)
        raise SystemError("something else")

    monkeypatch.setattr(pyast.ast, "parse", broken)
    with pytest.raises(SystemError, match="something else"):
        pyast.parse("x = 1")
    assert calls == [1]
    monkeypatch.undo()
    with pytest.raises(SyntaxError):
        pyast.parse("def (:")


def test_many_threads_parse_at_once():
    # Deeply nested sources in many threads: what triggered the 3.11 bug in the evaluator.
    src = "x = " + "(" * 80 + "1" + ")" * 80 + "\n" + "\n".join(f"def f{i}(a):\n    return [a for a in range({i})]"
                                                                  for i in range(200))
    with ThreadPoolExecutor(8) as ex:
        trees = list(ex.map(lambda _: pyast.parse(src), range(64)))
    assert all(len(t.body) == 201 for t in trees)


def test_dotted_names_an_attribute_chain():
    import ast

    from kernelgym.pyast import dotted

    def expr(src):
        return ast.parse(src, mode="eval").body

    assert dotted(expr("tl.dot")) == "tl.dot"
    assert dotted(expr("triton.language.range")) == "triton.language.range"
    assert dotted(expr("x")) == "x"
    assert dotted(expr("f().attr")) == "attr"   # only the attributes of a chain on a call
    assert dotted(expr("f()")) == ""


def test_decorator_names_are_the_last_names_called_or_not():
    from kernelgym.pyast import decorator_names

    fn = ast.parse("@triton.jit\n@triton.autotune(configs=[])\n@jit(debug=True)\n@f().g\ndef k(): pass").body[0]
    assert decorator_names(fn) == ["jit", "autotune", "jit", "g"]
    assert decorator_names(ast.parse("def k(): pass").body[0]) == []
