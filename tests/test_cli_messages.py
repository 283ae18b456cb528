"""One-line errors and honest messages from the `kernelgym` command (no tracebacks for bad input)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernelgym.cli import build_parser, main
from kernelgym.evaluation.codec import ITEMSIZES
from kernelgym.evaluation.evaluator import cuda_available

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "eval_data"


def test_unknown_op_category_is_one_line(capsys):
    assert main(["ops", "--category", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown --category 'bogus'" in err and "conv" in err and "Traceback" not in err


def test_reversed_difficulty_range_says_so(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["sample", "-d", "5-3", "--out", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "empty range '5-3'" in err and "3-5" in err and ">= 1" not in err


@pytest.mark.parametrize("flags, fragment", [
    (["--trials", "2"], "at least 3 correctness trials"),
    (["--timeout", "0"], "must be > 0 seconds"),
    (["--timeout", "-5"], "must be > 0 seconds"),
])
def test_eval_refuses_bad_numbers(capsys, flags, fragment):
    assert main(["eval", str(DATA / "ref_add.py"), str(DATA / "cand_add_ok.py"), *flags]) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.skipif(cuda_available(), reason="needs a machine without CUDA")
def test_eval_cuda_without_gpu_is_one_line(capsys):
    assert main(["eval", str(DATA / "ref_add.py"), str(DATA / "cand_add_ok.py"), "--backend", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "kernelgym eval: backend 'cuda' requested but no CUDA GPU is visible"


def test_help_names_defaults_and_no_missing_docs():
    parser = build_parser()
    assert "DESIGN.md" not in parser.format_help()
    sub = next(a for a in parser._actions if a.dest == "command").choices["eval"]
    text = " ".join(sub.format_help().split())
    assert "(default 120)" in text and "at least 3" in text


def test_raw_tensor_sizes_match_torch():
    import torch

    from kernelgym.evaluation.codec import _DTYPE_NAMES

    assert set(ITEMSIZES) == set(_DTYPE_NAMES)
    assert all(getattr(torch, name).itemsize == size for name, size in ITEMSIZES.items())


def test_parent_process_never_loads_torch(tmp_path):
    """The caller only relays tensors: a cold `kernelgym eval` must not pay for torch twice."""
    code = ("import sys\nfrom kernelgym.cli import main\n"
            f"main(['eval', {str(DATA / 'ref_add.py')!r}, {str(DATA / 'cand_add_ok.py')!r}, '--backend', "
            "'interpret', '--seed', '1'])\nprint('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "status:  ok" in out.stdout and out.stdout.strip().splitlines()[-1] == "False"


LOOP = (DATA / "cand_add_ok.py").read_text().replace(
    "        add_kernel[(triton.cdiv(n, 256),)](x, y, out, n, BLOCK=256)\n",
    "        while True:\n            add_kernel[(triton.cdiv(n, 256),)](x, y, out, n, BLOCK=256)\n")


@pytest.mark.slow
def test_ctrl_c_stops_eval_at_once_without_traceback(tmp_path):
    cand = tmp_path / "loop.py"
    cand.write_text(LOOP)
    assert "while True" in LOOP
    # Ctrl-C as an interactive shell delivers it: a suite started in the background by a
    # non-interactive shell inherits SIGINT ignored, and so would this command (it then ran on)
    p = subprocess.Popen([sys.executable, "-m", "kernelgym", "eval", str(DATA / "ref_add.py"), str(cand),
                          "--backend", "interpret", "--timeout", "200"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(20)   # well into the candidate's endless forward on a loaded 2-core machine
    assert p.poll() is None
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err and "interrupted" in err, err[-2000:]
    assert time.monotonic() - t < 5


def test_in_flight_names_the_running_phase(evaluator):
    import threading

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("v", evaluator.evaluate(
        (DATA / "ref_add.py").read_text(), LOOP, backend="interpret", timeout=4)))
    t.start()
    seen = set()
    while t.is_alive():
        seen.update(phase for phase, secs in evaluator.in_flight() if secs >= 0)
        time.sleep(0.05)
    assert "candidate" in seen and box["v"].status == "timeout"
    assert evaluator.in_flight() == []


def test_main_job_needs_no_dev_extra():
    """`make run` installs the core package only: the main job's modules and default policies must
    not import anything from the `dev` extra."""
    code = ("import sys\nimport kernelgym.runner, kernelgym.report, policies.search, policies.compiler\n"
            "dev = ['scipy', 'pandas', 'pyarrow', 'transformers', 'openai', 'ray', 'stable_baselines3', "
            "'hypothesis', 'pytest']\nprint([m for m in dev if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
