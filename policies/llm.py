"""LLM policies: one `Policy` interface over three ways of running a model.

- `HFPolicy`: Hugging Face transformers `generate` on a model object or a name/path (extra `llm`).
- `VLLMPolicy`: an in-process `vllm.LLM` engine (extra `train`); batches many tasks in one call.
- `OpenAIPolicy`: any OpenAI-compatible chat-completions server (`vllm serve`, SGLang, TGI, hosted
  APIs) through the `openai` client (extra `llm`). The client is used rather than raw HTTP because
  it already does what a policy needs and gets wrong easily: retries with exponential backoff
  that honour `Retry-After` on 408/409/429/5xx and dropped connections, per-request timeouts,
  typed errors, and `extra_body` for server-specific sampling fields (vLLM's `top_k`, ...).

All three build the conversation with `policies.prompts.build_messages` (the environments' own
prompt plus verdict feedback for each earlier attempt) and turn each reply into a source with
`policies.prompts.extract_source`, so a reply without code is still a string (judged
`format_error`), never an exception. Server failures do raise `LLMServerError`, after retries.

Seeds: with `seed=None` sampling is unseeded. With a seed, each request gets a seed derived from
it, the conversation and how many times this policy object was asked that same conversation, so a
fresh policy reproduces its proposals for a task whatever order tasks come in, and asking again
gives new samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kernelgym.task import Task
from policies.base import Attempt, Proposal
from policies.prompts import Message, PromptOptions, build_messages, extract_source, render_plain

__all__ = ["HFPolicy", "LLMPolicy", "LLMServerError", "OpenAIPolicy", "Reply", "SamplingOptions",
           "VLLMPolicy", "make_llm_policy"]


class LLMServerError(RuntimeError):
    """A model server failed (after the configured retries) or answered something unusable."""


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling settings shared by every engine (temperature 0 means greedy decoding)."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 4096
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 <= self.temperature <= 100:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Reply:
    """One raw model reply: its text (reasoning included as a `<think>` section) and why it ended."""

    text: str
    finish_reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return n


class LLMPolicy(ABC):
    """Base of the LLM policies: prompt building, seeding and extraction; engines only generate.

    Keyword options (all engines): temperature, top_p, max_new_tokens, seed, stop (sampling);
    system_prompt, mode, backend (the evaluation backend: it only names the target GPU in the
    prompt), max_history, target_speedup (prompt; see `PromptOptions`). Safe to call from several
    threads (`kernelgym run` does): in-process engines generate one request at a time.
    """

    name = "llm"
    engine = "?"

    def __init__(self, *, temperature: float = 0.7, top_p: float = 0.95, max_new_tokens: int = 4096,
                 seed: int | None = None, stop: Sequence[str] | str = (), system_prompt: str | None = None,
                 mode: str = "strict", backend: str = "auto", max_history: int = 3,
                 target_speedup: float = 1.0) -> None:
        self.sampling = SamplingOptions(temperature, top_p, max_new_tokens, seed, stop)
        self.prompting = PromptOptions(system_prompt, backend, mode, max_history, target_speedup)
        self._asked: Counter[str] = Counter()
        self._lock = threading.Lock()

    # -- what an engine implements ----------------------------------------------------------------
    @abstractmethod
    def generate(self, conversations: Sequence[list[Message]], n: int,
                 seeds: Sequence[int | None]) -> list[list[Reply]]:
        """`n` replies for each conversation (same order); `seeds[i]` seeds conversation i's request."""

    # -- the Policy interface ----------------------------------------------------------------------
    def messages(self, task: Task, history: Sequence[Attempt] = ()) -> list[Message]:
        """The conversation this policy sends for `task` after `history`."""
        return build_messages(task, history, self.prompting)

    def proposals(self, task: Task, n: int = 1, history: Sequence[Attempt] = ()) -> list[Proposal]:
        """`n` proposals with the raw reply, finish reason and seed in each `info`."""
        return self.proposals_batch([task], n, [history])[0]

    def propose(self, task: Task, n: int = 1, history: Sequence[Attempt] = ()) -> list[str]:
        """`n` candidate sources for `task` (see `policies.base.Policy`)."""
        return [p.source for p in self.proposals(task, n, history)]

    def propose_batch(self, tasks: Sequence[Task], n: int = 1,
                      histories: Sequence[Sequence[Attempt]] | None = None) -> list[list[str]]:
        """`propose` for several tasks at once (one batched engine call, or concurrent requests)."""
        return [[p.source for p in ps] for ps in self.proposals_batch(tasks, n, histories)]

    def proposals_batch(self, tasks: Sequence[Task], n: int = 1,
                        histories: Sequence[Sequence[Attempt]] | None = None) -> list[list[Proposal]]:
        """`proposals` for several tasks at once."""
        n = _check_n(n)
        tasks = list(tasks)
        histories = [()] * len(tasks) if histories is None else list(histories)
        if len(histories) != len(tasks):
            raise ValueError(f"got {len(histories)} histories for {len(tasks)} tasks")
        if not tasks:
            return []
        conversations = [self.messages(t, h) for t, h in zip(tasks, histories)]
        seeds = [self._request_seed(c) for c in conversations]
        # Greedy decoding has one answer however often it is asked (and some servers refuse n > 1 with it).
        asked = 1 if self.sampling.greedy else n
        replies = self.generate(conversations, asked, seeds)
        if len(replies) != len(conversations) or any(len(r) != asked for r in replies):
            raise LLMServerError(f"{self.engine} engine returned {[len(r) for r in replies]} replies, "
                                 f"expected {asked} for each of {len(conversations)} conversation(s)")
        if asked != n:
            replies = [[Reply(r.text, r.finish_reason, dict(r.meta)) for r in rs for _ in range(n)] for rs in replies]
        return [[Proposal(extract_source(r.text), {"reply": r.text, "finish_reason": r.finish_reason,
                                                   "seed": seed, "engine": self.engine, **r.meta})
                 for r in rs] for rs, seed in zip(replies, seeds)]

    def _request_seed(self, conversation: list[Message]) -> int | None:
        if self.sampling.seed is None:
            return None
        key = hashlib.sha256(json.dumps(conversation, sort_keys=True).encode()).hexdigest()
        with self._lock:
            count = self._asked[key]
            self._asked[key] += 1
        digest = hashlib.sha256(f"{self.sampling.seed}:{key}:{count}".encode()).digest()
        return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF

    def __repr__(self) -> str:
        return f"{type(self).__name__}(engine={self.engine!r}, {self.sampling})"


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers
# ------------------------------------------------------------------------------------------------
def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this policy needs `{module}`: pip install 'kernelgym[{extra}]' ({exc})") from exc


class HFPolicy(LLMPolicy):
    """`transformers` generation on a causal LM.

    model: a model object (then pass `tokenizer` too) or a hub name / local path (the tokenizer is
    loaded from the same place unless given). The chat template is used when the tokenizer has
    one, else `render_plain`. device: where to move the model (default: leave it where it is).
    batch_size: sequences per `generate` call (default: all `n` at once). generate_kwargs: extra
    `generate` arguments (logits processors, repetition_penalty, ...). model_kwargs: for
    `from_pretrained` (torch_dtype, device_map, ...).
    """

    engine = "hf"

    def __init__(self, model: Any, tokenizer: Any = None, *, device: Any = None, batch_size: int | None = None,
                 generate_kwargs: dict[str, Any] | None = None, model_kwargs: dict[str, Any] | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        if isinstance(model, (str, os.PathLike)):
            transformers = _require("transformers", "llm")
            self.model_name = str(model)
            model = transformers.AutoModelForCausalLM.from_pretrained(self.model_name, **(model_kwargs or {}))
            if tokenizer is None:
                tokenizer = self.model_name
        else:
            if tokenizer is None:
                raise ValueError("HFPolicy: pass the tokenizer along with a model object")
            self.model_name = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _require("transformers", "llm").AutoTokenizer.from_pretrained(str(tokenizer))
        if not callable(getattr(model, "generate", None)):
            raise TypeError(f"HFPolicy: model must have a generate() method, got {type(model).__name__}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be an int >= 1 or None, got {batch_size!r}")
        if device is not None:
            model = model.to(device)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size = batch_size
        self.generate_kwargs = dict(generate_kwargs or {})
        self._generate_lock = threading.Lock()

    @property
    def chat(self) -> bool:
        """Whether prompts go through the tokenizer's chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_text(self, conversation: list[Message]) -> str:
        """The exact prompt string the model sees."""
        if not self.chat:
            return render_plain(conversation)
        try:
            return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates that reject a system role (Gemma) raise errors of their own
            if conversation and conversation[0]["role"] == "system":
                merged = [{"role": "user", "content": conversation[0]["content"] + "\n\n"
                           + conversation[1]["content"]}, *conversation[2:]]
                return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
            raise

    def generate(self, conversations: Sequence[list[Message]], n: int,
                 seeds: Sequence[int | None]) -> list[list[Reply]]:
        with self._generate_lock:   # one model, global RNG state: one request at a time
            return [self._generate_one(c, n, s) for c, s in zip(conversations, seeds)]

    def _generate_one(self, conversation: list[Message], n: int, seed: int | None) -> list[Reply]:
        import torch

        tok, s = self.tokenizer, self.sampling
        # A chat template writes its own BOS; a plain prompt needs the tokenizer's.
        enc = tok(self.prompt_text(conversation), return_tensors="pt", add_special_tokens=not self.chat)
        device = getattr(self.model, "device", None) or "cpu"
        input_ids = enc["input_ids"].to(device)
        attention_mask = enc.get("attention_mask", torch.ones_like(input_ids)).to(device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        kwargs: dict[str, Any] = {"max_new_tokens": s.max_new_tokens, "pad_token_id": pad}
        if s.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=float(s.temperature), top_p=float(s.top_p))
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=tok)
        kwargs.update(self.generate_kwargs)
        eos: set[int] = set()
        for ids in (tok.eos_token_id, getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)):
            eos.update(ids if isinstance(ids, (list, tuple)) else [] if ids is None else [ids])
        chunk = self.batch_size or n
        cuda = [device.index or 0] if getattr(device, "type", str(device)) == "cuda" else []
        replies: list[Reply] = []
        with torch.random.fork_rng(devices=cuda), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            while len(replies) < n:
                k = min(chunk, n - len(replies))
                out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                          num_return_sequences=k, **kwargs)
                for seq in out[:, input_ids.shape[1]:]:
                    ids = seq.tolist()
                    while ids and ids[-1] == pad and pad not in eos:
                        ids.pop()
                    ended = bool(ids) and ids[-1] in eos
                    reason = "stop" if ended or len(ids) < s.max_new_tokens else "length"
                    replies.append(Reply(tok.decode(ids, skip_special_tokens=True), reason,
                                         {"model": self.model_name, "new_tokens": len(ids)}))
        return replies


# ------------------------------------------------------------------------------------------------
# vLLM engine
# ------------------------------------------------------------------------------------------------
class VLLMPolicy(LLMPolicy):
    """An in-process `vllm.LLM` engine: all conversations of a batch go in one `chat` call.

    model: a `vllm.LLM` (or anything with its `chat` / `generate` / `get_tokenizer`) or a model
    name/path (then `engine_kwargs` go to `vllm.LLM`). sampling_kwargs: extra `SamplingParams`
    fields (top_k, repetition_penalty, ...). sampling_params_cls: what builds the params (default
    `vllm.SamplingParams`; tests pass a stand-in).
    """

    engine = "vllm"

    def __init__(self, model: Any, *, engine_kwargs: dict[str, Any] | None = None,
                 sampling_kwargs: dict[str, Any] | None = None,
                 sampling_params_cls: Callable[..., Any] | None = None, **options: Any) -> None:
        super().__init__(**options)
        llm = model
        if isinstance(llm, (str, os.PathLike)):
            vllm = _require("vllm", "train")
            self.model_name = str(llm)
            llm = vllm.LLM(model=self.model_name, **(engine_kwargs or {}))
        else:
            self.model_name = getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "model", "")
        for method in ("chat", "generate", "get_tokenizer"):
            if not callable(getattr(llm, method, None)):
                raise TypeError(f"VLLMPolicy: model must be a name/path or have a {method}() method like vllm.LLM, "
                                f"got {type(llm).__name__}")
        self.llm = llm
        self.sampling_kwargs = dict(sampling_kwargs or {})
        self._params_cls = sampling_params_cls
        self._generate_lock = threading.Lock()

    def sampling_params_kwargs(self, n: int, seed: int | None) -> dict[str, Any]:
        """The `SamplingParams` fields for one request of `n` samples."""
        s = self.sampling
        kw: dict[str, Any] = {"n": n, "temperature": float(s.temperature), "max_tokens": s.max_new_tokens,
                              "seed": seed}
        if not s.greedy:
            kw["top_p"] = float(s.top_p)
        if s.stop:
            kw["stop"] = list(s.stop)
        kw.update(self.sampling_kwargs)
        return kw

    def _params(self, n: int, seed: int | None) -> Any:
        cls = self._params_cls or _require("vllm", "train").SamplingParams
        return cls(**self.sampling_params_kwargs(n, seed))

    @property
    def chat(self) -> bool:
        return bool(getattr(self.llm.get_tokenizer(), "chat_template", None))

    def generate(self, conversations: Sequence[list[Message]], n: int,
                 seeds: Sequence[int | None]) -> list[list[Reply]]:
        params = [self._params(n, s) for s in seeds]
        with self._generate_lock:   # vllm.LLM is not thread-safe; use propose_batch for throughput
            if self.chat:
                outputs = self.llm.chat(list(conversations), params, use_tqdm=False)
            else:
                outputs = self.llm.generate([render_plain(c) for c in conversations], params, use_tqdm=False)
        return [[Reply(o.text or "", getattr(o, "finish_reason", None), {"model": self.model_name})
                 for o in out.outputs] for out in outputs]


# ------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP server
# ------------------------------------------------------------------------------------------------
class OpenAIPolicy(LLMPolicy):
    """Any OpenAI-compatible chat-completions server.

    base_url: e.g. ``http://localhost:8000/v1`` (default `$OPENAI_BASE_URL`, else that address,
    where `vllm serve` listens). model: the served model's name; when None, the first model the
    server lists under ``/models`` (one request, made here, so a wrong URL fails at construction).
    api_key: default `$OPENAI_API_KEY`, else a placeholder (local servers ignore it).
    timeout: seconds per request; max_retries: retries on 408/409/429/5xx, timeouts and dropped
    connections (exponential backoff, `Retry-After` honoured). concurrency: parallel requests in
    `propose_batch`. extra_body: extra JSON fields for the server (vLLM: top_k, min_p, ...).
    client: an `openai.OpenAI` to use instead of building one.
    """

    engine = "openai"
    DEFAULT_BASE_URL = "http://localhost:8000/v1"

    def __init__(self, base_url: str | None = None, model: str | None = None, *, api_key: str | None = None,
                 timeout: float = 300.0, max_retries: int = 3, concurrency: int = 8,
                 extra_body: dict[str, Any] | None = None, client: Any = None, **options: Any) -> None:
        super().__init__(**options)
        if base_url is None:
            base_url = os.environ.get("OPENAI_BASE_URL") or self.DEFAULT_BASE_URL
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://localhost:8000/v1, got {base_url!r}")
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(f"model must be the served model's name (or None to ask the server), got {model!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        self.base_url, self.timeout, self.max_retries = base_url, float(timeout), max_retries
        self.concurrency = concurrency
        self.extra_body = dict(extra_body or {})
        if client is None:
            openai = _require("openai", "llm")
            client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                                   timeout=self.timeout, max_retries=max_retries)
        self.client = client
        self.model = model if model is not None else self._served_model()

    def _served_model(self) -> str:
        try:
            ids = [m.id for m in self.client.models.list()]
        except Exception as exc:  # any failure here means the same thing to the caller: name the model
            raise ValueError(f"no model given and {self.base_url}/models could not be listed "
                             f"({type(exc).__name__}: {exc}); pass model=... (--model)") from exc
        if not ids:
            raise ValueError(f"no model given and {self.base_url}/models lists none; pass model=... (--model)")
        return ids[0]

    def request(self, conversation: list[Message], n: int, seed: int | None) -> dict[str, Any]:
        """The chat-completions request body fields (without the messages' transport details)."""
        s = self.sampling
        body: dict[str, Any] = {"model": self.model, "messages": conversation, "n": n,
                                "temperature": float(s.temperature), "max_tokens": s.max_new_tokens}
        if not s.greedy:
            body["top_p"] = float(s.top_p)
        if seed is not None:
            body["seed"] = seed
        if s.stop:
            body["stop"] = list(s.stop)
        if self.extra_body:
            body["extra_body"] = self.extra_body
        return body

    def _complete(self, conversation: list[Message], n: int, seed: int | None) -> list[Reply]:
        import openai

        replies: list[Reply] = []
        # Servers that ignore `n` (or cap it) answer with fewer choices: ask again for the rest.
        for round_ in range(n):
            want = n - len(replies)
            round_seed = None if seed is None else (seed + round_) & 0x7FFFFFFF
            try:
                resp = self.client.chat.completions.create(**self.request(conversation, want, round_seed))
            except openai.APITimeoutError as exc:
                raise LLMServerError(f"{self.base_url}: request timed out after {self.timeout:g} s "
                                     f"({self.max_retries} retries)") from exc
            except openai.APIStatusError as exc:
                raise LLMServerError(f"{self.base_url}: HTTP {exc.status_code} from the server "
                                     f"(after up to {self.max_retries} retries): {exc.message}") from exc
            except openai.APIConnectionError as exc:
                raise LLMServerError(f"{self.base_url}: cannot reach the server "
                                     f"({self.max_retries} retries): {exc}") from exc
            choices = list(getattr(resp, "choices", None) or [])
            if not choices:
                raise LLMServerError(f"{self.base_url}: the server answered with no choices")
            for choice in choices[:want]:
                msg = choice.message
                text = msg.content or ""
                # vLLM's reasoning parsers return the thinking apart (`reasoning_content`, newer `reasoning`).
                extra = getattr(msg, "model_extra", None) or {}
                reasoning = extra.get("reasoning_content") or extra.get("reasoning")
                if isinstance(reasoning, str) and reasoning:
                    text = f"<think>{reasoning}</think>{text}"
                replies.append(Reply(text, choice.finish_reason, {"model": getattr(resp, "model", self.model)}))
            if len(replies) >= n:
                break
        return replies

    def generate(self, conversations: Sequence[list[Message]], n: int,
                 seeds: Sequence[int | None]) -> list[list[Reply]]:
        if len(conversations) == 1:
            return [self._complete(conversations[0], n, seeds[0])]
        with ThreadPoolExecutor(min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(lambda cs: self._complete(cs[0], n, cs[1]), zip(conversations, seeds)))


_KINDS: dict[str, type[LLMPolicy]] = {"hf": HFPolicy, "transformers": HFPolicy, "vllm": VLLMPolicy,
                                      "openai": OpenAIPolicy, "http": OpenAIPolicy}


def make_llm_policy(kind: str, *args: Any, **kwargs: Any) -> LLMPolicy:
    """An LLM policy by engine name: 'hf' / 'transformers', 'vllm', 'openai' / 'http'."""
    if kind not in _KINDS:
        raise ValueError(f"unknown LLM engine {kind!r}; choose one of {', '.join(sorted(_KINDS))}")
    return _KINDS[kind](*args, **kwargs)
