"""The code half of the LLM proposer, active when the user names editable files (``target.editable``).

What it adds to the prompt: the editable files' current text in the base code (the variant new
changes build on, ``VariantChecker.base()``; the unchanged code until a variant beats it), each
bounded (``max_file_chars``, with a note where cut) and all of them within their own budget,
``max_code_tokens``, on top of ``max_prompt_tokens`` (which bounds the rest: the files never
shorten the campaign's summary); this block is the stable prefix the proposer marks for prompt
caching (it changes only when the base or the user's files do). The variable
part gains the variants tried so far with their outcome (hypothesis, diff stat, runs, best, held
or not against the code they changed), the rejected ones with their reason, and which variant is
the base.

What it adds to the tool: a ``variants`` list ({hypothesis, edits: [{file, search, replace}],
params, parent}) and an optional ``variant`` per experiment (the code to run a configuration on).

Everything read back from the model is data: ``parse_variant`` turns one item into a Variant
(malformed input is a ``VariantRejected`` with the reason shown to the model next time); the
campaign's checker decides whether it may run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from hybrid.history import best_on, failure_of, judged_hardware, own
from hybrid.proposers.llm_context import CHARS_PER_TOKEN, CodeSections, quote_untrusted
from hybrid.types import Experiment, Objective, Variant
from hybrid.variants import VariantChecker, VariantInfo, VariantRejected, make_variant, normalize_edits

MAX_FILE_CHARS = 20_000  # per file shown to the model (target=gpt's longest, model/gpt.py, has ~17 400)
MAX_CODE_TOKENS = 16_000  # the files block in all, on top of max_prompt_tokens (target=gpt's three: ~15 500)
ORIGINAL = "original"  # what the model writes for the unchanged code (as parent, or an experiment's variant)
_NO_CODE = ("", "none", "null", ORIGINAL, "unchanged", "base code")


@dataclass(frozen=True)
class CodeView:
    """The code as one call sees it, read from the campaign's checker in the proposer's thread."""

    files: Mapping[str, str]  # each editable file's text in the base code, by relative path
    base: str | None  # the variant the files show (None: the unchanged code)
    known: Sequence[VariantInfo]  # every variant proposed so far, in order
    note: str = ""  # why the files show the unchanged code although a base is set


def code_view(checker: VariantChecker) -> CodeView:
    known = list(checker.known())
    base = checker.base()
    files, note = files_at(checker.files(), known, base)
    return CodeView(files, base, known, note)


def files_at(files: Mapping[str, str], known: Sequence[VariantInfo], variant_id: str | None) -> tuple[dict[str, str], str]:
    """The files with ``variant_id``'s chain of edits applied (its ancestors' first); the user's
    files and a note when the chain is unknown or no longer applies (the user changed a file)."""
    out = dict(files)
    if variant_id is None:
        return out, ""
    ok = {i.variant.id: i.variant for i in known if i.status == "ok"}
    chain: list[Variant] = []
    v: str | None = variant_id
    while v is not None and len(chain) <= len(ok):
        if v not in ok:
            return dict(files), f"the code of {variant_id} is not known; the files are shown unchanged"
        chain.append(ok[v])
        v = ok[v].parent
    for var in reversed(chain):
        for e in var.edits:
            rel = PurePosixPath(e.file.replace("\\", "/")).as_posix().removeprefix("./")
            text = out.get(rel)
            if text is None or text.count(e.search) != 1:
                return dict(files), (f"{rel} changed since {variant_id} was made; the files are shown unchanged "
                                     f"(build on {ORIGINAL!r}, or quote text that is in {variant_id})")
            out[rel] = text.replace(e.search, e.replace, 1)
    return out, ""


# ---- the stable block: the files ---------------------------------------------------------------
FILES_HEAD = """# Editable files (code variants)
Besides configurations you may propose code variants (`variants` in the {tool} tool): a hypothesis, \
edits as {{file, search, replace}} pairs (search: text copied exactly from the file as shown below, \
occurring exactly once; replace: its new text), optionally the params to run it with (the rest \
come from the best run of the code it changes) and a parent. The files are shown as they are in \
{where}. New variants build on that code unless you set parent: {original!r} for the unchanged \
code, or the id of another variant that may run (your search text must then match that code). \
Before any run each variant is checked: the file is editable, the search text occurs once, the \
edit changes something, sizes stay bounded, Python files compile, and the target's smoke test \
passes where it has one. A rejected variant never runs; its reason is shown to you next time. \
Keep a variant to one idea, so that its effect can be measured; a variant that helps becomes the \
base the next ones build on.{note}
"""


def fence_for(text: str) -> str:
    """A Markdown fence longer than any run of backticks in ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def fit_files(files: Mapping[str, str], budget_chars: int, max_file_chars: int = MAX_FILE_CHARS) -> dict[str, int]:
    """Characters shown of each file: at most ``max_file_chars`` each and ``budget_chars`` in all,
    shared out so that a short file is shown whole before a long one gets more (water filling)."""
    room = max(0, budget_chars)
    shown: dict[str, int] = {}
    order = sorted(files, key=lambda f: (len(files[f]), f))
    for i, f in enumerate(order):
        allow = min(len(files[f]), max_file_chars, room // (len(order) - i))
        shown[f] = allow
        room -= allow
    return shown


@dataclass(frozen=True)
class FilesBlock:
    text: str  # the stable block
    cut: Mapping[str, tuple[int, int]]  # each file shown cut: (characters shown, characters in all)
    overhead: int  # characters of the block besides the files' text (instructions, headers, notes)
    sizes: Mapping[str, int]  # characters of each file


def files_block(view: CodeView, tool: str, budget_chars: int, max_file_chars: int = MAX_FILE_CHARS) -> FilesBlock:
    """The editable files in the base code, within ``budget_chars`` (``files_budget_chars``)."""
    where = f"variant {view.base} (the current base)" if view.base else "the unchanged code (the user's tree)"
    head = FILES_HEAD.format(tool=tool, where=where, original=ORIGINAL, note=f" Note: {view.note}." if view.note else "")
    frames = {f: f"\n## File: {f} ({_n_lines(t)} lines)\n{fence_for(t)}{_lang(f)}\n\n{fence_for(t)}\n" for f, t in view.files.items()}
    cut_note = 170  # room for the note under a cut file
    overhead = len(head) + sum(len(fr) + cut_note for fr in frames.values())
    room = budget_chars - overhead
    shown = fit_files(view.files, room, max_file_chars)
    out, cut = [head], {}
    for f in sorted(view.files):
        text = view.files[f]
        part = text[: shown[f]]
        if shown[f] < len(text):
            part = part.rsplit("\n", 1)[0] if "\n" in part else part
            cut[f] = (len(part), len(text))
        fence = fence_for(text)
        out.append(f"\n## File: {f} ({_n_lines(text)} lines)\n{fence}{_lang(f)}\n{part.rstrip(chr(10))}\n{fence}\n")
        if f in cut:
            out.append(f"[... cut: lines {_n_lines(part) + 1}-{_n_lines(text)} of {f} are not shown (to fit the "
                       f"prompt); search text must come from the lines shown]\n")
    return FilesBlock("".join(out), cut, overhead, {f: len(t) for f, t in view.files.items()})


def _n_lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") or not text else 1)


def _lang(file: str) -> str:
    return {".py": "python", ".md": "markdown", ".yaml": "yaml", ".yml": "yaml", ".json": "json",
            ".sh": "bash", ".toml": "toml"}.get(PurePosixPath(file).suffix, "")


def files_budget_chars(max_code_tokens: int) -> int:
    """What the files block may take (instructions, headers and the files' text): its own budget,
    added to ``max_prompt_tokens`` rather than taken from it, so showing code never shortens the
    campaign's summary. Depends only on a setting, so the block (the cached prefix) is stable."""
    return max(0, int(max_code_tokens * CHARS_PER_TOKEN))


def cut_notice(block: FilesBlock, max_code_tokens: int, budget_chars: int, max_file_chars: int) -> str:
    """What the user is told once: which files the model sees cut, and the settings that show them whole."""
    parts = ", ".join(f"{f} {a:,} of {b:,} characters" for f, (a, b) in sorted(block.cut.items()))
    longest = max(block.sizes.values(), default=0)
    per_file = max(max_file_chars, math.ceil(longest / 1000) * 1000)
    needed = block.overhead + sum(min(n, per_file) for n in block.sizes.values())
    grow = (needed - budget_chars) / CHARS_PER_TOKEN  # the budget grows by CHARS_PER_TOKEN characters per token
    fixes = [f"proposer.llm.max_file_chars to {per_file:,}"] if per_file > max_file_chars else []
    if grow > 0:
        fixes.append(f"proposer.llm.max_code_tokens to about {max_code_tokens + math.ceil(grow) + 10:,}")
    return f"the editable files are shown to the LLM cut ({parts}); raise {' and '.join(fixes)} to show them whole"


# ---- the variable part: the variants so far ------------------------------------------------------
def code_sections(view: CodeView, files: str, history: Sequence[Experiment], objective: Objective) -> CodeSections:
    exps = [e for e in own(history) if not e.requeued]
    by: dict[str | None, list[Experiment]] = {}
    for e in exps:
        by.setdefault(e.variant, []).append(e)
    hw = judged_hardware(exps, objective)
    rows, rejected = [], []
    for info in reversed(view.known):
        v = info.variant
        hyp = quote_untrusted(v.hypothesis or "(no hypothesis given)", 200)
        if info.status != "ok":
            rejected.append(f"{v.id}: {hyp} -> rejected: {quote_untrusted(info.reason, 300)}")
            continue
        on = f"on {v.parent}" if v.parent else f"on the {ORIGINAL} code"
        files_changed = ", ".join(_diff_files(info.diff)) or "no file"
        mark = " [current base]" if v.id == view.base else ""
        rows.append(f"{v.id}{mark} ({on}; {files_changed}: {info.stat}): {hyp} -> "
                    f"{_outcome(by.get(v.id, []), by.get(v.parent, []), objective, hw)}")
    if view.base:
        base = (f"New variants build on {view.base}, the current base (its results beat the code it changed); "
                f"the files in the system prompt show its code. parent={ORIGINAL!r} builds on the unchanged code.")
    else:
        base = "New variants build on the unchanged code (no variant has beaten it yet)."
    return CodeSections(files, rows, rejected, base)


def _diff_files(diff: str) -> list[str]:
    return [line.split(" b/", 1)[-1] for line in diff.splitlines() if line.startswith("diff --git ")]


def _outcome(mine: Sequence[Experiment], base: Sequence[Experiment], objective: Objective, hw: str | None) -> str:
    """Runs, best and whether the variant held against the code it changed (its parent's runs)."""
    m = objective.metric
    done = [e for e in mine if e.value(m) is not None]
    failed = [e for e in mine if e.result is not None and e.value(m) is None]
    running = [e for e in mine if e.result is None]
    if not mine:
        return "not run yet"
    parts = [f"{len(mine)} run{'s' if len(mine) != 1 else ''} ({len(done)} done, {len(failed)} failed, "
             f"{len(running)} running)"]
    if failed:
        kinds = sorted({str(failure_of(e) or "crash") for e in failed})
        parts.append(f"failures: {', '.join(kinds)}")
    top = best_on(done, objective, hw) or best_on(done, objective, None)
    if top is None:
        return "; ".join([*parts, "no result yet" if running else "did not hold: every run failed"])
    v = top.value(m)
    parts.append(f"best {m} {v:.6f} ({top.id})")
    ref = best_on(base, objective, top.hardware)
    if ref is None:
        parts.append("the code it changed has no result to compare on this hardware yet")
    elif objective.better(v, ref.value(m)):
        parts.append(f"held: better than the code it changed ({ref.value(m):.6f}, {ref.id})")
    else:
        parts.append(f"did not hold: the code it changed has {ref.value(m):.6f} ({ref.id})")
    return "; ".join(parts)


# ---- the tool -----------------------------------------------------------------------------------
def add_code_to_tool(tool: Mapping[str, Any], max_proposals: int) -> dict[str, Any]:
    """The ``propose_experiments`` tool with variants: ``tool`` (the parameter-only one) extended."""
    tool = {**tool, "input_schema": {**tool["input_schema"]}}
    props = dict(tool["input_schema"]["properties"])
    exps = dict(props["experiments"])
    items = dict(exps["items"])
    params_schema = items["properties"]["params"]
    items["properties"] = {**items["properties"], "variant": {
        "type": "string",
        "description": f"optional: the code to run this configuration on: a variant id, or {ORIGINAL!r} for the "
                       "unchanged code; default: the current base"}}
    exps["items"] = items
    exps["description"] = "configurations to run (may be empty when you propose only code variants)"
    props["experiments"] = exps
    props["variants"] = {
        "type": "array",
        "maxItems": max_proposals,
        "description": "code variants: changes of the editable files, each run once with its params",
        "items": {
            "type": "object",
            "properties": {
                "hypothesis": {"type": "string", "description": "what this change tests, and why"},
                "expected_effect": {"type": "string", "description": "the predicted change of the metric"},
                "edits": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "description": "one of the editable files, as named"},
                            "search": {"type": "string",
                                       "description": "text copied exactly from the file, occurring exactly once"},
                            "replace": {"type": "string", "description": "the new text"},
                        },
                        "required": ["file", "search", "replace"],
                        "additionalProperties": False,
                    },
                },
                "params": {**params_schema,
                           "description": "optional: parameter values to run it with (the rest: the best run of "
                                          "the code it changes)"},
                "parent": {"type": "string",
                           "description": f"optional: the variant this builds on, or {ORIGINAL!r}; default: the "
                                          "current base"},
            },
            "required": ["hypothesis", "edits"],
        },
    }
    tool["input_schema"]["properties"] = props
    tool["description"] = tool["description"] + (
        " You may also propose code variants of the editable files (search/replace edits); experiments and "
        f"variants together: at most {max_proposals} per call.")
    return tool


# ---- reading the model's answer ------------------------------------------------------------------
def parent_of(value: Any, base: str | None) -> str | None:
    """The parent a variant item names: the base when it names none, None for the unchanged code."""
    if value is None:
        return base
    if not isinstance(value, str):
        raise VariantRejected(f"parent: expected a variant id or {ORIGINAL!r}, got {type(value).__name__}")
    return None if value.strip().lower() in _NO_CODE else value.strip()


def parse_variant(item: Mapping[str, Any], base: str | None, edits: Any) -> Variant:
    """A Variant from one ``variants`` item (``edits`` already decoded from a JSON string if sent as
    one); VariantRejected with the reason for malformed input. The checker decides the rest."""
    hypothesis = item.get("hypothesis")
    if hypothesis is not None and not isinstance(hypothesis, str):
        raise VariantRejected(f"hypothesis: expected a string, got {type(hypothesis).__name__}")
    parent = parent_of(item.get("parent"), base)
    return make_variant(normalize_edits(edits), (hypothesis or "").strip()[:1000], parent)
