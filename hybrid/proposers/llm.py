"""The LLM proposer: Claude reads a bounded summary of the campaign and proposes experiments.

It never blocks dispatch. ``propose(history, n)`` returns at once with the validated proposals
of the latest reply that are not yet tried or running (possibly none), and starts a new call on
a background thread when one is due: at the start, when the queue runs low and results have
arrived since the last call, when many results have arrived, or to retry. A reply replaces the
queue (the prompt shows the queue, so the model repeats what it still wants).

Safety: a proposal is data. Its parameters are validated against the search space (unknown
names, wrong types, values out of range or off the grid are rejected, and the reason is shown to
the model next time); categorical values are replaced by the space's own choice objects, numbers
become plain floats/ints. Nothing the model writes reaches a shell, a file path or code: the
hypothesis text goes to results.tsv, the store and MLflow only.

Code variants: only where the user named editable files (``target.editable``; the campaign hands
the proposer its ``VariantChecker`` through ``use_variants``). The model then also proposes
search/replace edits of those files (``hybrid.proposers.llm_code``); each is checked by the
campaign's checker here, on the proposer's thread, before it can become a candidate: a rejected
one never runs, its reason is recorded by the checker, told to the user once and shown to the
model next time. The files and instructions are the prompt's stable prefix, marked for prompt
caching (``cache_control``), so a long file costs its full price once per cache lifetime; they
have their own budget (``max_code_tokens``) on top of ``max_prompt_tokens``.

Failures: the SDK retries 429/5xx/timeouts with backoff (``max_retries``); a call that still
fails is retried after ``retry_interval_s``; after ``breaker_failures`` failed calls in a row the
circuit opens for ``breaker_cooldown_s`` (the campaign says so once and goes on with the other
proposers), then the LLM is tried again.

Cost: each reply's ``usage`` x the configured prices per million tokens, reported to the
campaign as a ``ProposerEvent`` (added to its spend, stored, mirrored to MLflow per call).

The API key comes from ``ANTHROPIC_API_KEY`` (or ``api_key``, for tests). It is handed to the
SDK client and nowhere else: not logged, not in any config, not in the store or MLflow.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hybrid.errors import ConfigError
from hybrid.history import clip
from hybrid.proposers.base import Proposer, ProposerEvent, incumbent
from hybrid.proposers.llm_code import (
    MAX_CODE_TOKENS,
    MAX_FILE_CHARS,
    add_code_to_tool,
    code_sections,
    code_view,
    cut_notice,
    files_block,
    files_budget_chars,
)
from hybrid.proposers.llm_context import (
    TOOL_NAME,
    PromptInputs,
    build_prompt,
    estimate_tokens,
    fixed_tokens,
    tool_definition,
)
from hybrid.proposers.llm_reply import Parsed, experiment_key, first_line, parse_reply
from hybrid.space import SearchSpace
from hybrid.types import Candidate, Experiment, Objective
from hybrid.variants import VariantChecker

__all__ = ["KEY_ENV", "LLMProposer", "Parsed", "parse_reply", "resolve_program"]

KEY_ENV = "ANTHROPIC_API_KEY"
PROGRAMS = Path(__file__).resolve().parents[2] / "conf" / "programs"
# HTTP statuses that retrying will not fix (a bad key, an unknown model, a malformed request, no credit)
_PERMANENT = {400, 401, 403, 404, 413, 422}


def resolve_program(program: str | None, target_name: str | None) -> Path:
    """The research program file: ``program`` if given, else conf/programs/<target>.md, then the
    file of the target's family (gpt_h100 -> gpt.md), then conf/programs/default.md."""
    if program:
        path = Path(str(program)).expanduser()
        if not path.is_file():
            raise ConfigError(f"proposer.llm.program: {path} is not a file; give the path of your research "
                              f"program (a Markdown file: goal, rules, known findings), e.g. {PROGRAMS / 'gpt.md'}")
        return path
    names = [f"{target_name}.md", f"{str(target_name).split('_')[0]}.md"] if target_name else []
    for name in [*names, "default.md"]:
        if (PROGRAMS / name).is_file():
            return PROGRAMS / name
    raise ConfigError(f"proposer.llm.program: no program given and {PROGRAMS / 'default.md'} is missing")


def _positive(where: str, value: Any, kind: type = float, allow_zero: bool = False) -> Any:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero) or (kind is int and not float(value).is_integer()):
        need = "an integer" if kind is int else "a number"
        raise ConfigError(f"proposer.llm.{where}: expected {need} {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return kind(value)


class LLMProposer(Proposer):
    """Claude as a proposer (Messages API with the ``propose_experiments`` tool).

    Args (all in ``conf/proposer/llm.yaml``):
        model, max_tokens, temperature: the Messages API request (temperature None: the model's
            default; some newer models accept no other value).
        price_input_per_mtok, price_output_per_mtok: USD per million input/output tokens.
        program: the research program (Markdown); None: the default for ``target_name``.
        max_prompt_tokens: the prompt (system + message + tool) is kept under this estimate; with
            editable files their text comes on top of it (``max_code_tokens``).
        max_proposals: experiments per reply, at most.
        refresh_after: ask again after this many new results even if proposals are still queued.
        timeout_s, max_retries: per request, handed to the SDK (which retries 429/5xx/timeouts).
        retry_interval_s: pause before retrying a call that failed after the SDK's retries.
        breaker_failures, breaker_cooldown_s: failed calls in a row that open the circuit, and for how long.
        max_calls: stop calling after this many calls (None: no cap).
        max_file_chars: with editable files, at most this many characters of each shown to the model.
        max_code_tokens: with editable files, the files block (their text and its instructions) is
            kept under this estimate, added to ``max_prompt_tokens``: the files never shorten the
            campaign's summary. The defaults show target=gpt's three files whole.
        background: False calls the API inside ``propose`` (deterministic, for tests and scripts).
        api_key: None reads ``ANTHROPIC_API_KEY``. http_client: an ``anthropic.DefaultHttpxClient``
            (tests pass one with a mock transport).
    """

    name = "llm"

    def __init__(
        self,
        space: SearchSpace,
        objective: Objective,
        seed: int = 0,
        *,
        model: str = "claude-sonnet-4-5",
        max_tokens: int = 4096,
        temperature: float | None = None,
        price_input_per_mtok: float = 3.0,
        price_output_per_mtok: float = 15.0,
        program: str | None = None,
        target_name: str | None = None,
        max_prompt_tokens: int = 12000,
        max_proposals: int = 8,
        refresh_after: int = 4,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        retry_interval_s: float = 10.0,
        breaker_failures: int = 3,
        breaker_cooldown_s: float = 300.0,
        max_calls: int | None = None,
        max_file_chars: int = MAX_FILE_CHARS,
        max_code_tokens: int = MAX_CODE_TOKENS,
        background: bool = True,
        api_key: str | None = None,
        http_client: Any = None,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
    ) -> None:
        super().__init__(space, objective, seed)
        key = api_key or os.environ.get(KEY_ENV)
        if not key:
            raise ConfigError(f"proposer=llm: {KEY_ENV} is not set; export your Anthropic API key in the "
                              "environment (never in a config file), or use proposer=hybrid, which runs the "
                              "classical proposers without the LLM")
        if not isinstance(model, str) or not model:
            raise ConfigError(f"proposer.llm.model: expected a model name like claude-sonnet-4-5, got {model!r}")
        self.model = model
        self.max_tokens = _positive("max_tokens", max_tokens, int)
        if temperature is not None and not (isinstance(temperature, int | float) and 0 <= temperature <= 1):
            raise ConfigError(f"proposer.llm.temperature: expected a number in [0, 1] or null, got {temperature!r}")
        self.temperature = temperature
        self.price_in = _positive("price_input_per_mtok", price_input_per_mtok, allow_zero=True)
        self.price_out = _positive("price_output_per_mtok", price_output_per_mtok, allow_zero=True)
        self.max_prompt_tokens = _positive("max_prompt_tokens", max_prompt_tokens, int)
        self.max_proposals = _positive("max_proposals", max_proposals, int)
        self.refresh_after = _positive("refresh_after", refresh_after, int)
        self.retry_interval_s = _positive("retry_interval_s", retry_interval_s, allow_zero=True)
        self.breaker_failures = _positive("breaker_failures", breaker_failures, int)
        self.breaker_cooldown_s = _positive("breaker_cooldown_s", breaker_cooldown_s, allow_zero=True)
        self.max_calls = None if max_calls is None else _positive("max_calls", max_calls, int)
        self.max_file_chars = _positive("max_file_chars", max_file_chars, int)
        self.max_code_tokens = _positive("max_code_tokens", max_code_tokens, int)
        max_retries = _positive("max_retries", max_retries, int, allow_zero=True)
        timeout_s = _positive("timeout_s", timeout_s)
        self.program_path = resolve_program(program, target_name)
        self.program = self.program_path.read_text()
        self.tool = tool_definition(space, self.max_proposals)
        floor = fixed_tokens(space, objective, self.program, self.tool)
        if floor + estimate_tokens(self.program) // 4 > self.max_prompt_tokens:
            raise ConfigError(f"proposer.llm.max_prompt_tokens: {self.max_prompt_tokens} is too small for this "
                              f"space and tool ({floor} tokens before any result); raise it")
        self.background = background
        self._clock = clock

        import anthropic

        for quiet in ("httpx", "httpx2"):  # one INFO line per request (Hydra logs INFO) would flood the live view
            if logging.getLogger(quiet).level == logging.NOTSET:
                logging.getLogger(quiet).setLevel(logging.WARNING)
        self._anthropic = anthropic
        self._client = anthropic.Anthropic(api_key=key, http_client=http_client, max_retries=int(max_retries),
                                           timeout=float(timeout_s))
        self._lock = threading.RLock()
        self._queue: list[Candidate] = []
        self._rejections: deque[str] = deque(maxlen=16)
        self._last_note = ""
        self._events: list[ProposerEvent] = []
        self._thread: threading.Thread | None = None
        self._inflight = False
        self._closed = False
        self._attempts = 0
        self._finished_at_call = 0
        self._failures = 0  # failed calls in a row
        self._not_before = 0.0
        self._retry = False
        self._permanent = False
        self._outage_said = False
        self._empty_replies = 0
        self._checker: VariantChecker | None = None  # set by use_variants when files are editable
        self._files_budget = 0
        self._cut_said = False
        # totals of this session (a resumed campaign reads earlier spend from its store)
        self.n_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.last_prompt_tokens = 0

    # ---- the Proposer contract --------------------------------------------------------------
    def use_variants(self, checker: VariantChecker) -> None:
        """Let the model change the editable files: the tool gains ``variants`` (and an experiment's
        ``variant``), the prompt the files and the variants so far. No editable file: nothing changes."""
        if not checker.editable:
            return
        tool = add_code_to_tool(tool_definition(self.space, self.max_proposals), self.max_proposals)
        with self._lock:
            self._checker, self.tool = checker, tool
            self._files_budget = files_budget_chars(self.max_code_tokens)

    def propose(self, history: Sequence[Experiment], n: int) -> list[Candidate]:
        with self._lock:
            start = self._due(history)
            if start:
                self._inflight = True
                self._attempts += 1
                snapshot = [copy.copy(e) for e in history]
        if start:
            if self.background:
                self._thread = threading.Thread(target=self._call, args=(snapshot,), name="hybrid-llm", daemon=True)
                self._thread.start()
            else:
                self._call(snapshot)
        with self._lock:
            seen = {experiment_key(self.space, e.params, e.variant) for e in history}
            self._queue = [c for c in self._queue if experiment_key(self.space, c.params, c.variant) not in seen]
            return list(self._queue[: max(n, 0)])

    def events(self) -> list[ProposerEvent]:
        with self._lock:
            out, self._events = self._events, []
        return out

    def waiting(self) -> bool:
        with self._lock:
            if self._closed or (self.max_calls is not None and self._attempts >= self.max_calls and not self._inflight):
                return False
            return self._inflight or (self._retry and not self._permanent) or 0 < self._empty_replies < 3

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the call in flight (if any) has finished; False if it is still running."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.wait(timeout=0.5)  # a hanging request is abandoned (daemon thread), not waited for
        self._client.close()

    # ---- when to call -------------------------------------------------------------------------
    def _due(self, history: Sequence[Experiment]) -> bool:
        if self._closed or self._inflight:
            return False
        if self.max_calls is not None and self._attempts >= self.max_calls:
            return False
        if self._clock() < self._not_before:
            return False
        if self._retry or self._attempts == 0 or 0 < self._empty_replies < 3:
            return True
        new = sum(1 for e in history if e.result is not None) - self._finished_at_call
        seen = {experiment_key(self.space, e.params, e.variant) for e in history}
        low = sum(1 for c in self._queue if experiment_key(self.space, c.params, c.variant) not in seen)
        return new >= self.refresh_after or (new >= 1 and low < max(1, self.max_proposals // 2))

    # ---- one call -----------------------------------------------------------------------------
    def _call(self, history: list[Experiment]) -> None:
        t0 = time.perf_counter()
        view = None
        try:
            with self._lock:
                checker, tool = self._checker, self.tool
                inputs = PromptInputs(self.space, self.objective, self.program, history, list(self._queue),
                                      list(self._rejections), self._last_note, self.max_proposals)
            if checker is not None:  # read here, on the proposer's thread: the checker is thread-safe
                view = code_view(checker)
                block = files_block(view, TOOL_NAME, self._files_budget, self.max_file_chars)
                inputs.code = code_sections(view, block.text, history, self.objective)
                if block.cut and not self._cut_said:
                    self._cut_said = True
                    with self._lock:
                        self._events.append(ProposerEvent(self.name, message=cut_notice(
                            block, self.max_code_tokens, self._files_budget, self.max_file_chars)))
            prompt = build_prompt(inputs, tool, self.max_prompt_tokens)
            self.last_prompt_tokens = prompt.tokens
            system: Any = prompt.system
            if prompt.files:  # the stable prefix (tools, instructions, program, space, files) is cached
                system = [{"type": "text", "text": prompt.system},
                          {"type": "text", "text": prompt.files, "cache_control": {"type": "ephemeral"}}]
            request: dict[str, Any] = dict(
                model=self.model, max_tokens=self.max_tokens, system=system,
                messages=[{"role": "user", "content": prompt.user}], tools=[tool],
                tool_choice={"type": "tool", "name": TOOL_NAME},
            )
            if self.temperature is not None:  # a body field: newer SDKs no longer take it as an argument
                request["extra_body"] = {"temperature": float(self.temperature)}
            response = self._client.messages.create(**request)
        except Exception as err:  # an API failure (after the SDK's retries) or a bug: never kill the thread
            self._failed(err, time.perf_counter() - t0)
            return
        latency = time.perf_counter() - t0
        try:
            self._replied(history, response, latency, prompt.tokens, checker, view.base if view else None)
        except Exception as err:  # an unexpected reply shape: reported like a failure, not raised
            self._failed(err, latency)

    def _replied(self, history: list[Experiment], response: Any, latency: float, prompt_tokens: int,
                 checker: VariantChecker | None = None, code_base: str | None = None) -> None:
        usage = response.usage
        tokens_in = int(getattr(usage, "input_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "output_tokens", 0) or 0)
        cache_write = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
        cache_read = int(getattr(usage, "cache_read_input_tokens", 0) or 0)
        cost = ((tokens_in + 1.25 * cache_write + 0.1 * cache_read) * self.price_in + tokens_out * self.price_out) / 1e6
        best = incumbent(history, self.objective)
        base = dict(best.params) if best is not None else self.space.defaults()
        reply = parse_reply(response, self.space, base, history, self.max_proposals, checker=checker,
                            code_base=code_base, objective=self.objective)
        accepted, rejected, note, n_made = reply.accepted, reply.rejected, reply.note, reply.made
        with self._lock:
            self.n_calls += 1
            self.input_tokens += tokens_in
            self.output_tokens += tokens_out
            self.cost_usd += cost
            self._finished_at_call = sum(1 for e in history if e.result is not None)
            if accepted:
                self._queue = accepted
                self._empty_replies = 0
            else:
                self._empty_replies += 1
            self._rejections.extend(f"call {self.n_calls}: {r}" for r in rejected)
            self._last_note = note
            was_out, self._outage_said = self._outage_said, False
            self._failures, self._retry, self._permanent = 0, False, False
            metrics = {"input_tokens": tokens_in, "output_tokens": tokens_out, "latency_s": latency,
                       "cost_usd": cost, "cost_usd_total": self.cost_usd, "proposed": n_made,
                       "accepted": len(accepted), "prompt_tokens_est": prompt_tokens, "ok": 1,
                       "cache_write_tokens": cache_write, "cache_read_tokens": cache_read}
            cached = f", {cache_read} read from the prompt cache" if cache_read else ""
            line = (f"call {self.n_calls}: {n_made} proposed, {len(accepted)} accepted, ${cost:.4f} "
                    f"({tokens_in} in / {tokens_out} out tokens{cached}, {latency:.1f} s)")
            if rejected:
                line += "; rejected: " + clip("; ".join(rejected), 300)
            if reply.variants_rejected:
                line += f"; {len(reply.variants_rejected)} code variant(s) rejected"
            if was_out:
                self._events.append(ProposerEvent(self.name, message="the LLM answers again; its proposals are back "
                                                  "in the candidate pool"))
            self._events.append(ProposerEvent(self.name, "call", line, cost, metrics))
            self._events.extend(ProposerEvent(self.name, message=f"code variant {vid} rejected, never run: "
                                              f"{clip(reason, 400)}") for vid, reason in reply.variants_rejected)
            self._inflight = False

    def _failed(self, err: BaseException, latency: float) -> None:
        a = self._anthropic
        status = getattr(err, "status_code", None)
        if isinstance(err, a.APITimeoutError):
            what = "timed out"
        elif isinstance(err, a.APIStatusError):
            what = f"HTTP {status} {type(err).__name__}: {first_line(getattr(err, 'message', str(err)))}"
        else:
            what = f"{type(err).__name__}: {first_line(str(err))}"
        key = getattr(self._client, "api_key", None)  # never echoed, should an error message quote it
        what = what.replace(key, "<redacted>") if key else what
        with self._lock:
            self._inflight = False
            if self._closed:
                return
            self._failures += 1
            self._retry = True
            self._permanent = status in _PERMANENT
            now = self._clock()
            if self._failures >= self.breaker_failures or self._permanent:
                self._not_before = now + self.breaker_cooldown_s
                if not self._outage_said:
                    self._outage_said = True
                    fix = " (check ANTHROPIC_API_KEY, proposer.llm.model and your account)" if self._permanent else ""
                    self._events.append(ProposerEvent(
                        self.name, message=f"the LLM is unavailable after {self._failures} failed call(s), last: "
                        f"{what}{fix}. The campaign goes on with the other proposers; the LLM is retried in "
                        f"{self.breaker_cooldown_s:g} s"))
            else:
                self._not_before = now + self.retry_interval_s
            self._events.append(ProposerEvent(self.name, "call", f"call failed: {what}", 0.0,
                                              {"latency_s": latency, "ok": 0, "cost_usd": 0.0,
                                               "cost_usd_total": self.cost_usd}))
