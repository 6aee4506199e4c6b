"""A stand-in for the Anthropic Messages API, served through the real SDK client's HTTP transport.

For tests and for trying the LLM proposer without a key (``examples/llm_mock_campaign.py``): the
real ``anthropic`` client sends real requests into an ``httpx.MockTransport`` whose handler
answers with Messages API JSON (a tool call, a text-only answer, an error status...)::

    fake = FakeMessagesAPI([tool_reply([{"params": {"lr": 0.02}, "hypothesis": "...", "expected_effect": "..."}])])
    proposer = LLMProposer(space, objective, api_key="test", http_client=fake.http_client())

Each entry of ``replies`` is a reply dict (``tool_reply``, ``text_reply``, ``error_reply``), an
exception to raise in the transport (``httpx.ReadTimeout``), or a callable ``(request_json) ->``
one of those. The last entry repeats when they run out.

Code variants (with ``target.editable``): ``tool_reply(experiments, variants=[variant_item([edit(
"model/gpt.py", "F.relu(x)", "F.gelu(x)")], "GeLU trains faster")])``; ``shown_files(request)``
reads back the files the prompt showed; ``CodeIdeas`` is a pretend model that proposes scripted
edits of those files, each once, when its search text is in them.
"""

from __future__ import annotations

import importlib
import json
import math
import random
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hybrid.proposers.llm_context import TOOL_NAME

Reply = dict[str, Any] | BaseException | Callable[[dict[str, Any]], Any]


def httpx_module() -> Any:
    """The httpx package the installed SDK is built on (``httpx``, or ``httpx2`` in newer SDKs)."""
    import anthropic

    base = next(c for c in anthropic.DefaultHttpxClient.__mro__[1:] if c.__name__ == "Client")
    return importlib.import_module(base.__module__.split(".")[0])


def tool_reply(experiments: Any, wave_note: str | None = None, input_tokens: int = 3000,
               output_tokens: int = 600, text: str = "", stop_reason: str = "tool_use",
               variants: Any = None) -> dict[str, Any]:
    """A Messages API response whose content is (optional text and) one propose_experiments call
    (with ``variants``: code variants too, e.g. a list of ``variant_item``)."""
    tool_input: dict[str, Any] = {"experiments": experiments}
    if variants is not None:
        tool_input["variants"] = variants
    if wave_note is not None:
        tool_input["wave_note"] = wave_note
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content.append({"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": TOOL_NAME, "input": tool_input})
    return _message(content, input_tokens, output_tokens, stop_reason)


def edit(file: str, search: str, replace: str) -> dict[str, str]:
    """One search/replace edit as the model writes it."""
    return {"file": file, "search": search, "replace": replace}


def variant_item(edits: Any, hypothesis: str = "a code change", params: Any = None, parent: Any = None,
                 expected_effect: str | None = "-0.002 val_bpb") -> dict[str, Any]:
    """One entry of the tool's ``variants``: keys left None are left out (as a model omits them)."""
    out: dict[str, Any] = {"hypothesis": hypothesis, "edits": edits}
    for k, v in (("params", params), ("parent", parent), ("expected_effect", expected_effect)):
        if v is not None:
            out[k] = v
    return out


_FILE = re.compile(r"^## File: (?P<file>\S+) \(\d+ lines\)\n(?P<fence>`{3,})[^\n]*\n(?P<text>.*?)\n(?P=fence)$",
                   re.MULTILINE | re.DOTALL)


def shown_files(request: Mapping[str, Any]) -> dict[str, str]:
    """The editable files a request showed the model (as shown: cut ones cut), by path."""
    system = request.get("system")
    blocks = system if isinstance(system, list) else [{"text": system or ""}]
    text = "".join(str(b.get("text", "")) for b in blocks)
    return {m["file"]: m["text"] for m in _FILE.finditer(text)}


def text_reply(text: str, input_tokens: int = 3000, output_tokens: int = 200) -> dict[str, Any]:
    return _message([{"type": "text", "text": text}], input_tokens, output_tokens, "end_turn")


def error_reply(status: int, kind: str = "api_error", message: str = "Internal server error",
                retry_after_ms: int | None = 1) -> dict[str, Any]:
    """An error response (429 rate_limit_error, 500 api_error, 529 overloaded_error...)."""
    headers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms is not None else {}
    return {"_status": status, "_headers": headers,
            "type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


def _message(content: list[dict[str, Any]], input_tokens: int, output_tokens: int, stop_reason: str) -> dict[str, Any]:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": content, "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "service_tier": "standard"},
    }


class FakeMessagesAPI:
    """Serves scripted replies to ``POST /v1/messages``; records every request body it received.

    ``cache=True`` plays prompt caching as the API does it: a request whose prefix (tools, then
    the system blocks up to the last one marked ``cache_control``) was seen before reads it from
    the cache (``cache_read_input_tokens``), a new one writes it (``cache_creation_input_tokens``);
    those tokens (characters / 4) leave the scripted ``input_tokens``."""

    def __init__(self, replies: Sequence[Reply], cache: bool = False) -> None:
        if not replies:
            raise ValueError("give at least one reply")
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.cache = cache
        self._cached: set[str] = set()
        self._lock = threading.Lock()

    def http_client(self) -> Any:
        """An ``anthropic.DefaultHttpxClient`` whose transport is this fake (no network)."""
        import anthropic

        return anthropic.DefaultHttpxClient(transport=httpx_module().MockTransport(self.handle))

    def handle(self, request: Any) -> Any:
        httpx = httpx_module()
        body = json.loads(request.content or b"{}")
        with self._lock:
            self.requests.append(body)
            reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        if callable(reply) and not isinstance(reply, BaseException):
            reply = reply(body)
        if isinstance(reply, BaseException):
            raise reply
        reply = dict(reply)
        if self.cache and "usage" in reply:
            reply["usage"] = self._cache_usage(body, dict(reply["usage"]))
        status = reply.pop("_status", 200)
        headers = {"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy", **reply.pop("_headers", {})}
        return httpx.Response(status, json=reply, headers=headers)

    def _cache_usage(self, body: Mapping[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
        system = body.get("system")
        blocks = system if isinstance(system, list) else []
        marked = [i for i, b in enumerate(blocks) if b.get("cache_control")]
        if not marked:
            return usage
        prefix = json.dumps(body.get("tools", [])) + "".join(b.get("text", "") for b in blocks[: marked[-1] + 1])
        tokens = len(prefix) // 4
        with self._lock:
            hit = prefix in self._cached
            self._cached.add(prefix)
        usage["cache_read_input_tokens" if hit else "cache_creation_input_tokens"] = tokens
        usage["input_tokens"] = max(1, int(usage.get("input_tokens", 0)) - tokens)
        return usage


class CodeIdeas:
    """A pretend model for demos and tests that changes code: ``ideas`` are (hypothesis, file,
    search, replace); each reply proposes the next ``per_reply`` of them whose search text occurs
    in the file as the prompt showed it (each idea once), and, when given, ``experiments``' own
    parameter proposals (e.g. ``OneFactorClaude``) beside them."""

    def __init__(self, ideas: Sequence[tuple[str, str, str, str]], per_reply: int = 1,
                 experiments: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.ideas = list(ideas)
        self.per_reply = per_reply
        self.experiments = experiments
        self.proposed: list[str] = []  # hypotheses, in the order proposed

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        files = shown_files(request)
        variants = []
        for idea in list(self.ideas):
            hypothesis, file, search, replace = idea
            if len(variants) >= self.per_reply:
                break
            if search in files.get(file, ""):
                self.ideas.remove(idea)
                self.proposed.append(hypothesis)
                variants.append(variant_item([edit(file, search, replace)], hypothesis))
        experiments: list[Any] = []
        if self.experiments is not None:
            made = self.experiments(request)
            experiments = next(b["input"]["experiments"] for b in made["content"] if b["type"] == "tool_use")
        return tool_reply(experiments, variants=variants, input_tokens=len(json.dumps(request)) // 4,
                          output_tokens=200 * (len(variants) + len(experiments)))


class OneFactorClaude:
    """A pretend model for demos: each reply moves one or two parameters of the incumbent to new
    values read off the tool's own schema, with a hypothesis worded like a researcher's. Use it as
    a reply: ``FakeMessagesAPI([OneFactorClaude(seed=0)])``."""

    def __init__(self, seed: int = 0, per_reply: int = 4) -> None:
        self.rng = random.Random(seed)
        self.per_reply = per_reply

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        tool = next(t for t in request["tools"] if t["name"] == TOOL_NAME)
        props = tool["input_schema"]["properties"]["experiments"]["items"]["properties"]["params"]["properties"]
        experiments = []
        for _ in range(self.per_reply):
            names = self.rng.sample(sorted(props), k=min(len(props), self.rng.choice((1, 1, 2))))
            params = {n: self._value(props[n]) for n in names}
            change = " and ".join(f"{n}={v}" for n, v in params.items())
            experiments.append({
                "params": params,
                "hypothesis": f"Setting {change} on the incumbent tests whether {' and '.join(names)} still "
                              "limits the metric at this budget.",
                "expected_effect": f"{self.rng.choice(['-', '+'])}0.00{self.rng.randint(1, 9)}",
            })
        return tool_reply(experiments, wave_note="one-factor moves around the incumbent",
                          input_tokens=len(json.dumps(request)) // 4, output_tokens=120 * self.per_reply)

    def _value(self, schema: dict[str, Any]) -> Any:
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        lo, hi = schema["minimum"], schema["maximum"]
        if schema["type"] == "integer":
            step = 1
            if "step " in schema.get("description", ""):
                step = int(schema["description"].split("step ")[1].split(")")[0])
            return lo + step * self.rng.randint(0, (hi - lo) // step)
        if "log scale" in schema.get("description", "") and lo > 0:
            return float(f"{math.exp(self.rng.uniform(math.log(lo), math.log(hi))):.4g}")
        return float(f"{self.rng.uniform(lo, hi):.4g}")
