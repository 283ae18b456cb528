"""LLM policies: prompts and refinement turns, reply extraction, and the three backends (a tiny
random HF model built locally, a loopback stub of the OpenAI chat-completions API, a fake vLLM
engine), ending with a stub server whose kernel the evaluator accepts."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from kernelgym.evaluation import evaluate
from kernelgym.evaluation.extract import check_format
from kernelgym.task import Task
from policies.base import Attempt, Policy
from policies.llm import HFPolicy, LLMPolicy, LLMServerError, OpenAIPolicy, Reply, VLLMPolicy, make_llm_policy
from policies.prompts import PromptOptions, build_messages, extract_source, render_plain, split_reasoning
from tests._tokenizer import char_tokenizer

REDTEAM = Path(__file__).resolve().parents[1] / "redteam"
TASK = Task.from_source((REDTEAM / "tasks" / "relu_add.py").read_text(), id="relu_add")
KERNEL = (REDTEAM / "legit" / "relu_add.py").read_text()
CHAT = "Here is a fused kernel.\n\n```python\n" + KERNEL + "```\nEach program handles 64 elements."

INCORRECT = {"status": "incorrect", "correct": False, "reasons": ["check:mismatch"],
             "error": "output 0: max abs error 3.5 > tolerance", "speedup": None}
FAST = {"status": "ok", "correct": True, "reasons": [], "speedup": 1.75, "speedup_vs_compile": 0.9}


# ------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------
def test_first_turn_is_the_environment_prompt():
    from kernelgym.envs.prompts import build_prompt

    msgs = build_messages(TASK)
    assert msgs == [{"role": "user", "content": build_prompt(TASK, "auto", "strict")}]
    msgs = build_messages(TASK, options=PromptOptions(system="Be terse.", mode="lenient", backend="interpret"))
    assert msgs[0] == {"role": "system", "content": "Be terse."}
    assert msgs[1]["content"] == build_prompt(TASK, "interpret", "lenient") and "Mode lenient" in msgs[1]["content"]


def test_refinement_turns_carry_source_and_verdict_feedback():
    history = [Attempt("class ModelNew: pass  # v1\n", INCORRECT), ("class ModelNew: pass  # v2\n", FAST)]
    msgs = build_messages(TASK, history, PromptOptions(target_speedup=2.0))
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert "# v1" in msgs[1]["content"] and msgs[1]["content"].startswith("```python")
    fb1, fb2 = msgs[2]["content"], msgs[4]["content"]
    assert "Attempt 1/3: status incorrect" in fb1 and "check:mismatch" in fb1 and "max abs error 3.5" in fb1
    assert "Attempt 2/3: status ok" in fb2 and "1.75x vs eager" in fb2 and "target 2.00x" in fb2
    assert "reply with the whole module again" in fb2


def test_history_is_capped_and_accepts_verdict_objects():
    from kernelgym.evaluation.verdict import Verdict

    v = Verdict(status="format_error", error="no top-level `ModelNew` defined")
    history = [Attempt(f"# attempt {i}\n", INCORRECT) for i in range(4)] + [("# attempt 4\n", v)]
    msgs = build_messages(TASK, history, PromptOptions(max_history=2))
    assert [m["content"] for m in msgs if m["role"] == "assistant"] == ["```python\n# attempt 3\n```",
                                                                        "```python\n# attempt 4\n```"]
    assert "3 earlier attempt(s) not shown" in msgs[2]["content"] and "Attempt 4/6" in msgs[2]["content"]
    assert "status format_error" in msgs[4]["content"] and "ModelNew" in msgs[4]["content"]
    none = build_messages(TASK, history, PromptOptions(max_history=0))
    assert len(none) == 1 and "5 earlier attempt(s)" in none[0]["content"]


def test_prompt_bad_input():
    with pytest.raises(TypeError, match="Task"):
        build_messages("not a task")
    with pytest.raises(TypeError, match="history items"):
        build_messages(TASK, [42])
    with pytest.raises(TypeError, match="sequence of attempts"):
        build_messages(TASK, "class ModelNew: pass")
    with pytest.raises(ValueError, match="mode"):
        PromptOptions(mode="loose")
    with pytest.raises(ValueError, match="max_history"):
        PromptOptions(max_history=-1)
    with pytest.raises(ValueError, match="role"):
        render_plain([{"role": "tool", "content": "x"}])


def test_render_plain_ends_at_the_assistant_turn():
    text = render_plain(build_messages(TASK, [("class ModelNew: pass\n", INCORRECT)], PromptOptions(system="S")))
    assert text.startswith("### System:\nS\n") and text.endswith("### Assistant:\n")
    assert text.count("### User:") == 2 and text.count("### Assistant:") == 2


# ------------------------------------------------------------------------------------------------
# extraction
# ------------------------------------------------------------------------------------------------
GOOD = "import torch\n\nclass ModelNew(torch.nn.Module):\n    pass\n"
DRAFT = "class ModelNew:\n    x = 1\n"


@pytest.mark.parametrize("reply, expect", [
    (GOOD, GOOD),
    (f"Sure!\n```python\n{GOOD}```\nDone.", GOOD),
    (f"Draft:\n```python\n{DRAFT}```\nFixed version:\n```python\n{GOOD}```\nUsage:\n```python\nm = ModelNew()\n```", GOOD),
    (f"```py\n{GOOD}```\n```bash\npython run.py\n```", GOOD),
    (f"~~~python\n{GOOD}~~~", GOOD),
    (f"<think>try this\n```python\n{DRAFT}```\n</think>\nFinal:\n```python\n{GOOD}```", GOOD),
    (f"<think>the answer is\n```python\n{GOOD}```\n</think>", GOOD),
    (f"reasoning opened by the template\n```python\n{DRAFT}```\n</think>\n```python\n{GOOD}```", GOOD),
    (f"<think>cut off while thinking\n```python\n{GOOD}```\nhmm, maybe", GOOD),
    (f"```python\n{GOOD}```\nA faster one:\n```python\n{GOOD}    def forward(self, x):\n        return (", GOOD),
    (f"Here is the code:\n{GOOD}\nIt should be fast.\nThanks", GOOD),
    (f"# Solution\nHere is the code:\n{GOOD}\nIt should be fast.", GOOD),
])
def test_extract_source_finds_the_final_module(reply, expect):
    src = extract_source(reply)
    assert src.strip() == expect.strip()
    check_format(src)


def test_extract_source_scans_fences_with_the_evaluators_scanner():
    """One fence scanner: the policy's reply parsing and the evaluator's extraction agree on blocks
    (a CRLF reply, a closing fence longer than its opening one, a cut block)."""
    import policies.prompts as prompts
    from kernelgym.evaluation import extract

    assert prompts.code_blocks is extract.code_blocks
    crlf = GOOD.replace("\n", "\r\n")
    assert extract_source(f"Sure:\r\n```python\r\n{crlf}```\r\nDone.") == crlf
    assert extract_source(f"```python\n{DRAFT}````\nthen\n```python\n{GOOD}```") == GOOD
    assert extract_source("```python\n") == ""


def test_extract_source_never_raises():
    cut = "Here:\n```python\nimport torch\nclass ModelNew(torch.nn.Module):\n    def forward(self, x):\n        ret"
    assert extract_source(cut).startswith("import torch\nclass ModelNew")   # broken, judged compile/format error
    assert extract_source("I cannot help with that.") == "I cannot help with that."
    assert extract_source("<think>no idea</think>") == "<think>no idea</think>"
    assert extract_source("") == "" and extract_source(None) == "" and extract_source(12) == "12"
    assert extract_source("```python\nprint('hi')\n```") == "print('hi')\n"


def test_split_reasoning():
    assert split_reasoning("<think>a</think>b<THINKING>c</thinking>d") == ("bd", "a\nc")
    assert split_reasoning("a</think>b") == ("b", "a")
    assert split_reasoning("x<think>cut") == ("x", "cut")


# ------------------------------------------------------------------------------------------------
# the shared base: interface, seeds, batch
# ------------------------------------------------------------------------------------------------
class EchoPolicy(LLMPolicy):
    """Backend that answers with the kernel and records what it was asked."""

    engine = "echo"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def generate(self, conversations, n, seeds):
        self.calls.append((conversations, n, list(seeds)))
        return [[Reply(CHAT, "stop") for _ in range(n)] for _ in conversations]


def test_base_policy_interface_seeds_and_batch():
    p = EchoPolicy(seed=3)
    assert isinstance(p, Policy) and p.name == "llm"
    assert p.propose(TASK, n=2) == [KERNEL.strip("\n") + "\n"] * 2
    info = p.proposals(TASK)[0].info
    assert info["reply"] == CHAT and info["finish_reason"] == "stop" and info["engine"] == "echo"
    q = EchoPolicy(seed=3)
    q.propose(TASK, n=2)
    first, again, fresh = p.calls[0][2][0], p.calls[1][2][0], q.calls[0][2][0]
    assert first == fresh and first != again           # reproducible per conversation, new when asked again
    other = EchoPolicy(seed=4)
    other.propose(TASK)
    assert other.calls[0][2][0] != first
    assert EchoPolicy().proposals(TASK)[0].info["seed"] is None
    out = p.propose_batch([TASK, TASK], n=1, histories=[(), [("# v1\n", INCORRECT)]])
    assert len(out) == 2 and len(p.calls[-1][0]) == 2 and "# v1" in p.calls[-1][0][1][1]["content"]
    assert p.propose_batch([]) == []


def test_base_policy_bad_input():
    p = EchoPolicy()
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be"):
            p.propose(TASK, n=n)
    with pytest.raises(ValueError, match="histories"):
        p.propose_batch([TASK], histories=[(), ()])
    for kw, match in [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
                      ({"max_new_tokens": 0}, "max_new_tokens"), ({"seed": "x"}, "seed"), ({"stop": [""]}, "stop")]:
        with pytest.raises(ValueError, match=match):
            EchoPolicy(**kw)
    with pytest.raises(ValueError, match="unknown LLM engine"):
        make_llm_policy("gpt")

    class Short(EchoPolicy):
        def generate(self, conversations, n, seeds):
            return [[Reply("x")] for _ in conversations]

    with pytest.raises(LLMServerError, match="expected 2"):
        Short().propose(TASK, n=2)


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers: a tiny random Llama and a character tokenizer, built here
# ------------------------------------------------------------------------------------------------
# The scripted reply: reasoning, chatter, then the kernel; its lines are whole tokens so that
# forcing it takes a few dozen decoding steps, not a thousand.
SCRIPT = f"<think>relu(x + y) in one pass.\n```python\n{DRAFT}```\n</think>\n{CHAT}"


def _tokenizer(chat: bool = True):
    pytest.importorskip("transformers")
    return char_tokenizer(chat, extra_tokens=(line + "\n" for line in SCRIPT.splitlines() if len(line) > 1))


def _model(tok, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    import torch

    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny():
    tok = _tokenizer()
    return _model(tok), tok


@pytest.fixture(autouse=True)
def _one_thread(request):
    """One intra-op thread for the tiny model: on a busy 2-core machine more threads make it 10x slower."""
    if not request.node.name.startswith("test_hf"):
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_hf_random_model_gives_n_strings(tiny):
    model, tok = tiny
    p = HFPolicy(model, tok, max_new_tokens=6, seed=0, temperature=1.0)
    assert p.chat and p.prompt_text(p.messages(TASK)).startswith("<|user|>You are an expert")
    props = p.proposals(TASK, n=3)
    assert len(props) == 3 and all(isinstance(x.source, str) for x in props)
    assert all(x.info["finish_reason"] in ("length", "stop") and x.info["new_tokens"] <= 6 for x in props)
    again = HFPolicy(model, tok, max_new_tokens=6, seed=0, temperature=1.0).propose(TASK, n=3)
    assert again == [x.source for x in props]                       # seeded: a fresh policy repeats itself
    greedy = HFPolicy(model, tok, max_new_tokens=4, temperature=0).propose(TASK, n=2)
    assert len(greedy) == 2 and greedy[0] == greedy[1]


def test_hf_whole_path_extracts_the_kernel(tiny):
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    model, tok = tiny
    script = tok(SCRIPT, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(script) < 120
    start = tok.convert_tokens_to_ids("<|assistant|>")

    class Force(LogitsProcessor):
        """Replace the random model's choice with the script's next token (after the last assistant tag)."""

        def __call__(self, input_ids, scores):
            for row, ids in enumerate(input_ids.tolist()):
                step = len(ids) - (len(ids) - 1 - ids[::-1].index(start)) - 1
                scores[row] = -torch.inf
                scores[row, script[min(step, len(script) - 1)]] = 0
            return scores

    p = HFPolicy(model, tok, max_new_tokens=200, seed=1, generate_kwargs={"logits_processor": LogitsProcessorList([Force()])})
    history = [Attempt("class ModelNew: pass\n", INCORRECT)]
    props = p.proposals(TASK, n=2, history=history)
    assert [x.info["reply"] for x in props] == [SCRIPT] * 2
    assert [x.source.strip() for x in props] == [KERNEL.strip()] * 2
    assert all(x.info["finish_reason"] == "stop" for x in props)
    assert "check:mismatch" in p.prompt_text(p.messages(TASK, history))


def test_hf_plain_prompt_and_loading_by_path(tmp_path):
    tok = _tokenizer(chat=False)
    model = _model(tok)
    p = HFPolicy(model, tok, max_new_tokens=3)
    assert not p.chat and p.prompt_text(p.messages(TASK)).endswith("### Assistant:\n")
    assert len(p.propose(TASK, n=2)) == 2
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = HFPolicy(str(tmp_path / "m"), max_new_tokens=3, seed=5)
    assert len(loaded.propose(TASK, n=2)) == 2 and loaded.model_name == str(tmp_path / "m")
    with pytest.raises(ValueError, match="tokenizer"):
        HFPolicy(model)
    with pytest.raises(TypeError, match="generate"):
        HFPolicy(object(), tok)
    with pytest.raises(ValueError, match="batch_size"):
        HFPolicy(model, tok, batch_size=0)


# ------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP: a stub server on loopback
# ------------------------------------------------------------------------------------------------
class Stub:
    """A chat-completions server on 127.0.0.1 (ephemeral port) that replies as `plan` says.

    plan(body, request_index) -> ("ok", contents) | ("ok", contents, extra_message_fields)
                                 | ("error", http_status) | ("sleep", seconds)
    """

    def __init__(self, plan, models=("served-coder",)):
        self.plan, self.requests, self.stop, self.models = plan, [], threading.Event(), list(models)
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub.requests.append({"path": self.path, "method": "GET"})
                data = json.dumps({"object": "list", "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "stub"} for m in stub.models]}).encode()
                self.send_response(200 if self.path == "/v1/models" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                action = stub.plan(body, len(stub.requests) - 1)
                if action[0] == "sleep":
                    stub.stop.wait(action[1])
                    return
                if action[0] == "error":
                    data = json.dumps({"error": {"message": "model overloaded", "type": "server_error"}}).encode()
                    self.send_response(action[1])
                    self.send_header("retry-after-ms", "5")   # keeps the client's backoff short
                else:
                    extra = action[2] if len(action) > 2 else {}
                    choices = [{"index": i, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": c, **extra}}
                               for i, c in enumerate(action[1])]
                    data = json.dumps({"id": "cmpl-1", "object": "chat.completion", "created": 0,
                                       "model": body["model"], "choices": choices,
                                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    servers = []

    def make(plan, **kw):
        servers.append(Stub(plan, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _echo_n(body, i):
    return ("ok", [CHAT] * body.get("n", 1))


def test_openai_n_samples_and_request_fields(stub):
    pytest.importorskip("openai")
    s = stub(_echo_n)
    p = OpenAIPolicy(s.url, "tiny-coder", api_key="k", temperature=0.5, top_p=0.9, max_new_tokens=512, seed=7,
                     stop=["</answer>"], extra_body={"top_k": 20}, system_prompt="You write Triton.")
    out = p.propose(TASK, n=3)
    assert out == [KERNEL.strip("\n") + "\n"] * 3 and len(s.requests) == 1
    r = s.requests[0]
    assert r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer k" and r["model"] == "tiny-coder"
    assert (r["n"], r["temperature"], r["top_p"], r["max_tokens"], r["stop"], r["top_k"]) == (3, 0.5, 0.9, 512, ["</answer>"], 20)
    assert isinstance(r["seed"], int) and r["messages"][0] == {"role": "system", "content": "You write Triton."}
    assert r["messages"][1]["content"].startswith("You are an expert GPU kernel engineer")
    assert OpenAIPolicy(s.url, "m", temperature=0).propose(TASK, n=2) == out[:2]
    assert s.requests[1]["n"] == 1 and s.requests[1]["temperature"] == 0 and "top_p" not in s.requests[1]


def test_openai_history_shows_up_in_the_request(stub):
    pytest.importorskip("openai")
    s = stub(_echo_n)
    p = OpenAIPolicy(s.url, "m")
    p.propose(TASK, history=[Attempt("class ModelNew: pass  # first try\n", INCORRECT)])
    msgs = s.requests[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert "# first try" in msgs[1]["content"]
    assert "status incorrect" in msgs[2]["content"] and "check:mismatch" in msgs[2]["content"]
    assert "max abs error 3.5" in msgs[2]["content"]


def test_openai_server_ignoring_n_and_reasoning_field(stub):
    pytest.importorskip("openai")
    s = stub(lambda body, i: ("ok", [""], {"reasoning_content": f"```python\n{GOOD}```"}))
    out = OpenAIPolicy(s.url, "m", seed=1).propose(TASK, n=3)
    assert [x.strip() for x in out] == [GOOD.strip()] * 3 and len(s.requests) == 3
    assert len({r["seed"] for r in s.requests}) == 3        # each top-up asks for fresh samples


def test_openai_retries_then_succeeds_or_fails_clearly(stub):
    pytest.importorskip("openai")
    s = stub(lambda body, i: ("error", 503) if i < 2 else _echo_n(body, i))
    assert len(OpenAIPolicy(s.url, "m", max_retries=2).propose(TASK, n=2)) == 2 and len(s.requests) == 3
    s = stub(lambda body, i: ("error", 500))
    with pytest.raises(LLMServerError, match=r"HTTP 500 .*1 retries.*overloaded"):
        OpenAIPolicy(s.url, "m", max_retries=1).propose(TASK)
    assert len(s.requests) == 2
    s = stub(lambda body, i: ("error", 400))
    with pytest.raises(LLMServerError, match="HTTP 400"):
        OpenAIPolicy(s.url, "m", max_retries=3).propose(TASK)
    assert len(s.requests) == 1                              # a client error is not retried


def test_openai_timeout_and_unreachable_server(stub):
    pytest.importorskip("openai")
    s = stub(lambda body, i: ("sleep", 10))
    t0 = time.monotonic()
    with pytest.raises(LLMServerError, match="timed out after 0.3 s"):
        OpenAIPolicy(s.url, "m", timeout=0.3, max_retries=0).propose(TASK)
    assert time.monotonic() - t0 < 5
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LLMServerError, match="cannot reach"):
        OpenAIPolicy(f"http://127.0.0.1:{port}/v1", "m", max_retries=0, timeout=2).propose(TASK)


def test_openai_batch_and_bad_config(stub):
    pytest.importorskip("openai")

    def plan(body, i):
        k = re.search(r"relu\(x \+ y\) #(\d)", body["messages"][0]["content"]).group(1)
        return ("ok", [f"```python\nclass ModelNew: pass  # t{k}\n```"])

    s = stub(plan)
    tasks = [Task.from_source(TASK.source.replace("relu(x + y)", f"relu(x + y) #{k}"), id=f"t{k}") for k in range(3)]
    out = OpenAIPolicy(s.url, "m", concurrency=3).propose_batch(tasks, histories=[(), (), [("# old\n", FAST)]])
    assert out == [[f"class ModelNew: pass  # t{k}\n"] for k in range(3)] and len(s.requests) == 3
    [old] = [r for r in s.requests if len(r["messages"]) == 3]
    assert "# old" in old["messages"][1]["content"] and "#2" in old["messages"][0]["content"]
    for kw, match in [({"base_url": "localhost:8000"}, "base_url"), ({"model": ""}, "model"),
                      ({"timeout": 0}, "timeout"), ({"max_retries": -1}, "max_retries"),
                      ({"concurrency": 0}, "concurrency")]:
        with pytest.raises(ValueError, match=match):
            OpenAIPolicy(**{"base_url": s.url, "model": "m", **kw})


def test_end_to_end_stub_server_kernel_is_ok(stub, evaluator):
    pytest.importorskip("openai")
    s = stub(lambda body, i: ("ok", [f"<think>Fuse the add into the relu.</think>\n{CHAT}"]))
    policy = make_llm_policy("openai", s.url, "stub-coder", backend="interpret", seed=0)
    [source] = policy.propose(TASK)
    verdict = evaluate(TASK, source, backend="interpret", evaluator=evaluator)
    assert verdict.status == "ok", (verdict.status, verdict.reasons, verdict.error, verdict.timings)
    assert "interpreter" in s.requests[0]["messages"][0]["content"]


def test_openai_model_from_the_server_and_default_url(stub, monkeypatch):
    pytest.importorskip("openai")
    s = stub(_echo_n, models=["served-coder", "other"])
    p = OpenAIPolicy(s.url)
    assert p.model == "served-coder" and s.requests[0]["path"] == "/v1/models"
    p.propose(TASK)
    assert s.requests[1]["model"] == "served-coder"
    monkeypatch.setenv("OPENAI_BASE_URL", s.url)
    assert OpenAIPolicy(model="m").base_url == s.url
    with pytest.raises(ValueError, match="lists none"):
        OpenAIPolicy(stub(_echo_n, models=[]).url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ValueError, match="could not be listed"):
        OpenAIPolicy(f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=2)


def test_kernelgym_run_with_the_llm_policy(stub, tmp_path, evaluator):
    """`kernelgym run --policy llm --base-url URL` resolves this policy and reports an ok verdict."""
    pytest.importorskip("openai")
    from kernelgym import runner
    from kernelgym.cli import build_parser

    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "relu_add.py").write_text(TASK.source)
    s = stub(lambda body, i: ("ok", [CHAT]))
    out = tmp_path / "out"
    args = build_parser().parse_args(["run", "--policy", "llm", "--base-url", s.url, "--model", "stub-coder",
                                      "--suite", str(suite), "--backend", "interpret", "--out", str(out),
                                      "--no-progress"])
    assert runner.main_run(args, evaluator=evaluator) == 0
    [row] = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert row["status"] == "ok" and row["task_id"] == "relu_add" and row["policy"] == "llm"
    [req] = [r for r in s.requests if r["path"].endswith("/chat/completions")]
    assert req["model"] == "stub-coder" and "interpreter" in req["messages"][0]["content"]


# ------------------------------------------------------------------------------------------------
# vLLM: request building against a fake engine; the real SamplingParams when vllm is installed
# ------------------------------------------------------------------------------------------------
class FakeLLM:
    def __init__(self, chat_template):
        self.tokenizer = SimpleNamespace(chat_template=chat_template)
        self.calls = []

    def get_tokenizer(self):
        return self.tokenizer

    def _out(self, params):
        return [SimpleNamespace(outputs=[SimpleNamespace(text=CHAT, finish_reason="length")] * p["n"]) for p in params]

    def chat(self, messages, sampling_params, use_tqdm=True):
        self.calls.append(("chat", messages, sampling_params))
        return self._out(sampling_params)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append(("generate", prompts, sampling_params))
        return self._out(sampling_params)


def test_vllm_request_building_with_a_fake_engine():
    llm = FakeLLM("{{ messages }}")
    p = VLLMPolicy(llm, sampling_params_cls=dict, temperature=0.6, top_p=0.8, max_new_tokens=256, seed=11,
                   stop="</s>", sampling_kwargs={"top_k": 20})
    out = p.propose_batch([TASK, TASK], n=2, histories=[(), [("# old\n", INCORRECT)]])
    assert out == [[KERNEL.strip("\n") + "\n"] * 2] * 2 and len(llm.calls) == 1   # one batched engine call
    kind, convs, params = llm.calls[0]
    assert kind == "chat" and len(convs) == 2 and "# old" in convs[1][1]["content"]
    assert params[0] == {"n": 2, "temperature": 0.6, "top_p": 0.8, "max_tokens": 256, "seed": params[0]["seed"],
                         "stop": ["</s>"], "top_k": 20}
    assert isinstance(params[0]["seed"], int) and params[0]["seed"] != params[1]["seed"]
    assert p.proposals(TASK)[0].info["finish_reason"] == "length"
    plain = FakeLLM(None)
    assert len(VLLMPolicy(plain, sampling_params_cls=dict, temperature=0).propose(TASK, n=3)) == 3
    kind, prompts, params = plain.calls[0]
    assert kind == "generate" and prompts[0].endswith("### Assistant:\n")
    assert params[0] == {"n": 1, "temperature": 0.0, "max_tokens": 4096, "seed": None}   # greedy: asked once
    with pytest.raises(TypeError, match="vllm.LLM"):
        VLLMPolicy(object(), sampling_params_cls=dict)


def test_vllm_sampling_params_when_installed():
    vllm = pytest.importorskip("vllm")
    p = VLLMPolicy(FakeLLM("{{ messages }}"), temperature=0.5, seed=2, max_new_tokens=64)
    params = p._params(4, 123)
    assert isinstance(params, vllm.SamplingParams)
    assert (params.n, params.temperature, params.max_tokens, params.seed) == (4, 0.5, 64, 123)
    assert len(p.propose(TASK, n=4)) == 4
