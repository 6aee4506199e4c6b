"""Reading the LLM's answer: the proposals of one reply, validated, with a reason for each one refused.

A reply is data. Each experiment's params are completed from the incumbent and validated against
the space; duplicates of what was tried, is running or was proposed earlier in the reply are
dropped; with editable files each code variant is decoded (``hybrid.proposers.llm_code``), its
params completed from the best run of the code it changes, and checked by the campaign's
``VariantChecker`` before it becomes a candidate. Nothing the model sends raises.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hybrid.errors import InvalidCandidateError
from hybrid.history import clip, fmt_params
from hybrid.proposers.base import incumbent
from hybrid.proposers.llm_code import ORIGINAL, parent_of, parse_variant
from hybrid.proposers.llm_context import TOOL_NAME
from hybrid.space import SearchSpace
from hybrid.types import Candidate, Experiment, Objective
from hybrid.variants import VariantChecker, VariantRejected


def first_line(text: str) -> str:
    return clip((text.strip().splitlines() or [""])[0], 240)


def _as_json(value: Any) -> Any:
    """Models sometimes send a nested object as a JSON string: decode it (data only, never evaluated)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def experiment_key(space: SearchSpace, params: Mapping[str, Any], variant: str | None) -> tuple:
    """An experiment's identity: its configuration and the code it runs (the same params on another
    variant are another experiment)."""
    return (variant, space.key(params))


@dataclass
class Parsed:
    """What one reply proposed, once validated."""

    accepted: list[Candidate]
    rejected: list[str]  # reasons, shown to the model next time (rejections the checker records are not here)
    note: str  # the wave note
    made: int  # proposals made: experiments and variants
    variants_rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason) the checker refused


def parse_reply(response: Any, space: SearchSpace, base: Mapping[str, Any], history: Sequence[Experiment],
                max_proposals: int, *, checker: VariantChecker | None = None, code_base: str | None = None,
                objective: Objective | None = None) -> Parsed:
    """The validated proposals of one reply, with the reasons for the rest.

    Each experiment's params are completed from ``base`` (the incumbent) and validated; one that is
    invalid, a duplicate of an experiment in ``history`` or of an earlier proposal in the reply, or
    beyond ``max_proposals`` is rejected with its reason. With a ``checker`` (editable files) an
    experiment runs on ``code_base`` unless it names its variant, and each code variant is decoded,
    its params completed from the best run of the code it changes (``objective``), and checked by
    ``checker`` before it becomes a candidate; nothing the model sends raises.
    """
    calls = [b for b in response.content if getattr(b, "type", None) == "tool_use" and b.name == TOOL_NAME]
    if not calls:
        said = " ".join(getattr(b, "text", "") for b in response.content if getattr(b, "type", None) == "text")
        return Parsed([], [f"your reply had no {TOOL_NAME} tool call (text only: {clip(said, 120)!r}); "
                           f"answer with the tool"], "", 0)
    rejected: list[str] = []
    items: list[Any] = []
    variant_items: list[Any] = []
    note = ""
    for call in calls:
        data = _as_json(call.input)
        if not isinstance(data, dict):
            rejected.append(f"malformed tool input: expected an object with 'experiments', got {type(data).__name__}")
            continue
        exps = _as_json(data.get("experiments"))
        raw_variants = _as_json(data.get("variants"))
        if exps is None and checker is not None and raw_variants is not None:
            exps = []  # only code variants this time
        if not isinstance(exps, list):
            rejected.append("malformed tool input: 'experiments' must be a list of {params, hypothesis, "
                            f"expected_effect}}, got {type(exps).__name__}")
        else:
            items.extend(exps)
        if raw_variants is not None:
            if checker is None:
                rejected.append("'variants': code changes are not enabled in this campaign (target.editable is "
                                "empty); propose configurations only")
            elif not isinstance(raw_variants, list):
                rejected.append("malformed tool input: 'variants' must be a list of {hypothesis, edits, params, "
                                f"parent}}, got {type(raw_variants).__name__}")
            else:
                variant_items.extend(raw_variants)
        if isinstance(data.get("wave_note"), str):
            note = clip(data["wave_note"], 400)
    tried = {experiment_key(space, e.params, e.variant): e.id for e in history}
    taken: set[tuple] = set()
    accepted: list[Candidate] = []
    ok_code = {i.variant.id for i in checker.known() if i.status == "ok"} if checker is not None else set()
    for i, item in enumerate(items, 1):
        if len(accepted) >= max_proposals:
            rejected.append(f"#{i} and later: over the limit of {max_proposals} experiments per reply")
            break
        item = _as_json(item)
        if not isinstance(item, dict):
            rejected.append(f"#{i}: malformed: expected an object {{params, hypothesis, expected_effect}}")
            continue
        params = _as_json(item.get("params"))
        if not isinstance(params, dict):
            rejected.append(f"#{i}: malformed: 'params' must be an object of parameter values")
            continue
        shown = clip(" ".join(f"{k}={v!r}" for k, v in params.items()), 100)
        code: str | None = None
        if checker is not None:
            try:
                code = parent_of(item.get("variant"), code_base)
            except VariantRejected as e:
                rejected.append(f"#{i} ({shown}): variant: {str(e).removeprefix('parent: ')}")
                continue
            if code is not None and code not in ok_code:
                rejected.append(f"#{i} ({shown}): variant {clip(code, 40)!r} is not a code variant that may run; "
                                f"name one listed under your code variants, or {ORIGINAL!r}")
                continue
        try:
            config = space.validate({**base, **params})
        except InvalidCandidateError as e:
            rejected.append(f"#{i} ({shown}): {e}")
            continue
        key = experiment_key(space, config, code)
        if key in tried:
            rejected.append(f"#{i} ({fmt_params(config, base, 'incumbent', digits=4)}): duplicate of {tried[key]}, already tried or running")
            continue
        if key in taken:
            rejected.append(f"#{i} ({fmt_params(config, base, 'incumbent', digits=4)}): duplicate of an earlier proposal in this reply")
            continue
        taken.add(key)
        accepted.append(Candidate(config, "llm", _rationale(item), code))
    out = Parsed(accepted, rejected, note, len(items) + len(variant_items))
    if checker is not None and variant_items:
        _parse_variants(out, variant_items, space, base, history, max_proposals, checker, code_base, objective,
                        tried, taken)
    return out


def _rationale(item: Mapping[str, Any]) -> str:
    hypothesis = clip(str(item.get("hypothesis") or "(no hypothesis given)"), 500)
    effect = clip(str(item.get("expected_effect") or ""), 160)
    return f"{hypothesis} Expected: {effect}" if effect else hypothesis


def _parse_variants(out: Parsed, items: Sequence[Any], space: SearchSpace, base: Mapping[str, Any],
                    history: Sequence[Experiment], max_proposals: int, checker: VariantChecker,
                    code_base: str | None, objective: Objective | None, tried: Mapping[tuple, str],
                    taken: set[tuple]) -> None:
    """Code variants into ``out``: malformed ones, invalid params and duplicates rejected with the
    reason (nothing checked); the rest checked by ``checker`` (which records refusals)."""
    refused = {i.variant.id: i.reason for i in checker.known() if i.status != "ok"}
    for i, item in enumerate(items, 1):
        where = f"variant #{i}"
        if len(out.accepted) >= max_proposals:
            out.rejected.append(f"{where} and later: over the limit of {max_proposals} experiments and variants per reply")
            return
        item = _as_json(item)
        if not isinstance(item, dict):
            out.rejected.append(f"{where}: malformed: expected an object {{hypothesis, edits, params, parent}}")
            continue
        try:
            variant = parse_variant(item, code_base, _as_json(item.get("edits")))
        except VariantRejected as e:
            out.rejected.append(f"{where}: {e}")
            continue
        params = _as_json(item.get("params"))
        if params is None:
            params = {}
        if not isinstance(params, dict):
            out.rejected.append(f"{where} ({variant.id}): malformed: 'params' must be an object of parameter values")
            continue
        fill = base
        if objective is not None:
            on_parent = incumbent([e for e in history if e.variant == variant.parent], objective)
            fill = dict(on_parent.params) if on_parent is not None else base
        try:
            config = space.validate({**fill, **params})
        except InvalidCandidateError as e:
            out.rejected.append(f"{where} ({variant.id}): params: {e}")
            continue
        key = experiment_key(space, config, variant.id)
        if key in tried or key in taken:
            what = f"duplicate of {tried[key]}, already tried or running" if key in tried else \
                "duplicate of an earlier proposal in this reply"
            out.rejected.append(f"{where} ({variant.id} {fmt_params(config, fill, 'its base', digits=4)}): {what}")
            continue
        if variant.id in refused:  # the user was told once; the model is reminded
            out.rejected.append(f"{where} ({variant.id}): proposed again; it was rejected: {clip(refused[variant.id], 200)}")
            continue
        try:
            checker.check(variant, source="llm")
        except VariantRejected as e:  # recorded by the checker: the next prompt lists it with its reason
            out.variants_rejected.append((variant.id, str(e)))
            continue
        except Exception as e:  # a fault of the check itself: the variant does not run, the proposer goes on
            out.rejected.append(f"{where} ({variant.id}): could not be checked ({type(e).__name__}: "
                                f"{first_line(str(e))}); it does not run")
            continue
        taken.add(key)
        out.accepted.append(Candidate(config, "llm", _rationale(item), variant.id))
