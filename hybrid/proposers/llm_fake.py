"""A stand-in for the Anthropic Messages API, served through the real SDK client's HTTP transport.

For tests and for trying the LLM proposer without a key (``examples/llm_mock_campaign.py``): the
real ``anthropic`` client sends real requests into an ``httpx.MockTransport`` whose handler
answers with Messages API JSON (a tool call, a text-only answer, an error status...)::

    fake = FakeMessagesAPI([tool_reply([{"params": {"lr": 0.02}, "hypothesis": "...", "expected_effect": "..."}])])
    proposer = LLMProposer(space, objective, api_key="test", http_client=fake.http_client())

Each entry of ``replies`` is a reply dict (``tool_reply``, ``text_reply``, ``error_reply``), an
exception to raise in the transport (``httpx.ReadTimeout``), or a callable ``(request_json) ->``
one of those. The last entry repeats when they run out.
"""

from __future__ import annotations

import importlib
import json
import math
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

from hybrid.proposers.llm_context import TOOL_NAME

Reply = dict[str, Any] | BaseException | Callable[[dict[str, Any]], Any]


def httpx_module() -> Any:
    """The httpx package the installed SDK is built on (``httpx``, or ``httpx2`` in newer SDKs)."""
    import anthropic

    base = next(c for c in anthropic.DefaultHttpxClient.__mro__[1:] if c.__name__ == "Client")
    return importlib.import_module(base.__module__.split(".")[0])


def tool_reply(experiments: Any, wave_note: str | None = None, input_tokens: int = 3000,
               output_tokens: int = 600, text: str = "", stop_reason: str = "tool_use") -> dict[str, Any]:
    """A Messages API response whose content is (optional text and) one propose_experiments call."""
    tool_input: dict[str, Any] = {"experiments": experiments}
    if wave_note is not None:
        tool_input["wave_note"] = wave_note
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content.append({"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": TOOL_NAME, "input": tool_input})
    return _message(content, input_tokens, output_tokens, stop_reason)


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
    """Serves scripted replies to ``POST /v1/messages``; records every request body it received."""

    def __init__(self, replies: Sequence[Reply]) -> None:
        if not replies:
            raise ValueError("give at least one reply")
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
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
        status = reply.pop("_status", 200)
        headers = {"request-id": "req_011CSHoEeqs5C35K2UUqR7Fy", **reply.pop("_headers", {})}
        return httpx.Response(status, json=reply, headers=headers)


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
