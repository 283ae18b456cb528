"""Triton's host modules (per-signature CUDA launchers) kept across candidates in a confined GPU
worker (`kernelgym.evaluation.driver_modules`)."""

from __future__ import annotations

import shutil
import sys
import types

import pytest

from kernelgym.evaluation import driver_modules


def _counting_build():
    built: list[str] = []

    def build(src, name, library_dirs=None, include_dirs=None, libraries=None, ccflags=None, **kw):
        built.append(src)
        mod = types.ModuleType(name)
        mod.launch = lambda *a: ("launched", src)
        return mod

    return build, built


def test_a_module_is_built_once_per_source_and_reused():
    build, built = _counting_build()
    memo = driver_modules.CompiledModules(build)
    a = memo(src="sig A", name="__triton_launcher", library_dirs=["/l"], include_dirs=["/i"], libraries=["cuda"])
    again = memo(src="sig A", name="__triton_launcher", library_dirs=["/l"], include_dirs=["/i"], libraries=["cuda"])
    b = memo(src="sig B", name="__triton_launcher", library_dirs=["/l"], include_dirs=["/i"], libraries=["cuda"])
    other_dirs = memo(src="sig A", name="__triton_launcher", library_dirs=["/other"], include_dirs=["/i"],
                      libraries=["cuda"])
    assert again is a and b is not a and other_dirs is not a
    assert built == ["sig A", "sig B", "sig A"] and (memo.builds, memo.hits) == (3, 1)


def test_a_module_a_candidate_changed_is_built_again():
    """A candidate that swaps a kept launcher's C function (to steer the next candidate's launches)
    or adds an attribute gets the module dropped: the next candidate's launcher is built anew."""
    build, built = _counting_build()
    memo = driver_modules.CompiledModules(build)
    first = memo(src="sig", name="__triton_launcher")
    first.launch = lambda *a: "fake"
    second = memo(src="sig", name="__triton_launcher")
    assert second is not first and second.launch()[0] == "launched" and memo.rebuilt == 1
    second.planted = 1
    third = memo(src="sig", name="__triton_launcher")
    assert third is not second and len(built) == 3
    assert memo(src="sig", name="__triton_launcher") is third


def test_keep_compiled_patches_the_driver_that_builds_launchers(monkeypatch):
    """Installed where a driver module calls ``compile_module_from_src`` by its own name (Triton
    3.6's CUDA driver); a no-op where none does (Triton 3.9 launches through one generic function)."""
    build, built = _counting_build()
    fake = types.ModuleType("fake_driver")
    fake.compile_module_from_src = build
    monkeypatch.setitem(sys.modules, "fake_driver", fake)
    monkeypatch.setattr(driver_modules, "_USERS", ("fake_driver", "no_such_driver"))
    monkeypatch.setattr(driver_modules, "_INSTALLED", [])
    memo = driver_modules.keep_compiled()
    assert memo is not None and fake.compile_module_from_src is memo and driver_modules.keep_compiled() is memo
    fake.compile_module_from_src(src="s", name="n")
    fake.compile_module_from_src(src="s", name="n")
    assert built == ["s"]
    monkeypatch.setattr(driver_modules, "_USERS", ("no_such_driver",))
    monkeypatch.setattr(driver_modules, "_INSTALLED", [])
    assert driver_modules.keep_compiled() is None


@pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("clang")), reason="no C compiler")
def test_the_memo_calls_this_tritons_own_builder(tmp_path, monkeypatch):
    """With the installed Triton's ``compile_module_from_src``, called as its drivers call it: a
    real extension module is built once, and a second call with the same source costs no build."""
    from triton.runtime import build as triton_build

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    src = ('#include <Python.h>\nstatic PyObject* answer(PyObject* s, PyObject* a) { return PyLong_FromLong(42); }\n'
           'static PyMethodDef M[] = {{"answer", answer, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};\n'
           'static struct PyModuleDef D = {PyModuleDef_HEAD_INIT, "kg_probe", NULL, -1, M};\n'
           'PyMODINIT_FUNC PyInit_kg_probe(void) { return PyModule_Create(&D); }\n')
    memo = driver_modules.CompiledModules(triton_build.compile_module_from_src)
    mod = memo(src=src, name="kg_probe", library_dirs=[], include_dirs=[], libraries=[])
    shutil.rmtree(tmp_path / "cache")   # a confined worker's cache is retired after each candidate
    assert memo(src=src, name="kg_probe", library_dirs=[], include_dirs=[], libraries=[]) is mod
    assert mod.answer() == 42 and (memo.builds, memo.hits) == (1, 1)
