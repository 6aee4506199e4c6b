"""Code variants: the LLM's edits of the target's code, checked before any worker is spent.

A variant is a list of search/replace edits (``Edit(file, search, replace)``, the format
code-evolution systems use) on the files the user named in ``target.editable``, optionally stacked
on another variant. ``build`` checks it against the user's tree (the file is editable and inside
the workdir, the search text occurs exactly once, the edit changes something, sizes stay bounded,
Python files still compile: compiled, never run) and returns what it changes: the new text of each
file and a unified diff with ``a/`` ``b/`` paths that ``git apply`` or ``patch -p1`` applies to the
user's clean tree. ``write_into`` puts a built variant into an experiment's snapshot; the user's
files are never changed.

A variant's id is a content hash of its parent's id and its normalized edits: the same change
proposed twice is one variant, and a stored variant is found again on resume.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from hybrid.errors import ConfigError, HybridError
from hybrid.types import Candidate, Edit, Variant

__all__ = ["Built", "Editable", "Limits", "VariantChecker", "VariantInfo", "VariantRejected", "build", "diff_stat",
           "make_variant", "normalize_edits", "spread", "unified_diff", "variant_id", "write_into"]


class VariantRejected(HybridError):
    """A proposed variant failed a check; the message is the reason shown to the LLM next time."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one variant may change."""

    max_edits: int = 12
    max_edit_chars: int = 20_000  # search + replace of one edit
    max_file_bytes: int = 1_000_000  # an edited file, before and after


@dataclass(frozen=True)
class VariantInfo:
    """What a proposer sees of one variant proposed so far."""

    variant: Variant
    status: str  # "ok" (checked; may run) | "rejected" (never runs)
    reason: str  # why it was rejected ("" when ok)
    diff: str  # unified diff against the user's tree ("" when rejected)

    @property
    def stat(self) -> str:
        return diff_stat(self.diff)


class VariantChecker(Protocol):
    """What the campaign hands a proposer that may change the code (``Proposer.use_variants``).
    Called from the proposer's own thread; every method is thread-safe."""

    @property
    def editable(self) -> Editable:
        """The files the proposer may edit (empty: no code edits; ``target.editable``)."""

    def files(self) -> dict[str, str]:
        """The current text of every editable file, by relative path (the user's tree, unchanged)."""

    def check(self, variant: Variant, source: str) -> Built:
        """Check a proposed variant (``build``, then ``target.smoke_command`` when set) and record it
        with its outcome; VariantRejected (recorded, with its reason) when it must not run."""

    def known(self) -> list[VariantInfo]:
        """Every variant proposed so far, ok and rejected, in the order proposed."""

    def base(self) -> str | None:
        """The variant new code changes should build on: the one whose results beat the unchanged code
        beyond noise (autoresearch's keep), None while the unchanged code is best."""

    def explore(self, k: int = 4) -> list[str | None]:
        """The codes parameter candidates are worth running on, best first: the base, then up to
        ``k - 1`` other codes that may run by their best result, then those not run yet (None: the
        unchanged code). A proposer spreads its parameter candidates over them in turn."""


def spread(cands: Sequence[Candidate], codes: Sequence[str | None]) -> list[Candidate]:
    """Code-agnostic candidates (a parameter proposer's) spread over ``codes`` in turn, the first
    on ``codes[0]`` (``VariantChecker.explore``: the base); with one code, all run on it."""
    if not codes:
        return list(cands)
    return [replace(c, variant=codes[i % len(codes)]) for i, c in enumerate(cands)]


# ---- the editable set ---------------------------------------------------------------------------
class Editable:
    """The files of ``target.workdir`` named by ``target.editable`` (globs relative to the workdir)."""

    def __init__(self, workdir: Path | str, patterns: Sequence[str]) -> None:
        self.workdir = Path(workdir).resolve()
        self.patterns = tuple(str(p) for p in patterns)
        files: set[str] = set()
        for i, pattern in enumerate(self.patterns):
            where = f"target.editable[{i}]"
            pure = PurePosixPath(pattern)
            if not pattern.strip() or pure.is_absolute() or ".." in pure.parts:
                raise ConfigError(f"{where}: {pattern!r} must be a glob relative to target.workdir, without '..' "
                                  "(e.g. train.py or 'model/*.py')")
            matched = [m for m in self.workdir.glob(pattern) if m.is_file() and self._inside(m)]
            if not matched:
                raise ConfigError(f"{where}: {pattern!r} matches no file in {self.workdir}; name files of the "
                                  "target's code, e.g. train.py or 'model/*.py'")
            files.update(m.relative_to(self.workdir).as_posix() for m in matched)
        self.files: tuple[str, ...] = tuple(sorted(files))

    def __bool__(self) -> bool:
        return bool(self.files)

    def _inside(self, path: Path) -> bool:
        """The file, symlinks resolved, is inside the workdir (a link out of it is never editable)."""
        try:
            path.resolve(strict=True).relative_to(self.workdir)
        except (ValueError, OSError):
            return False
        return not path.is_symlink()

    def check(self, file: str) -> str:
        """The edit's file as a normalized relative path, or VariantRejected."""
        pure = PurePosixPath(str(file).replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts:
            raise VariantRejected(f"{file!r} is outside target.workdir; edit one of: {', '.join(self.files)}")
        rel = pure.as_posix().removeprefix("./")
        if rel not in self.files:
            raise VariantRejected(f"{file!r} is not an editable file; edit one of: {', '.join(self.files)}")
        if not self._inside(self.workdir / rel):
            raise VariantRejected(f"{rel!r} is a link out of target.workdir now; it cannot be edited")
        return rel

    def read(self, rel: str, limits: Limits) -> str:
        path = self.workdir / rel
        try:
            data = path.read_bytes()
        except OSError as e:
            raise VariantRejected(f"{rel}: cannot be read ({e.strerror or e})") from None
        if len(data) > limits.max_file_bytes:
            raise VariantRejected(f"{rel}: {len(data)} bytes, over the {limits.max_file_bytes}-byte limit of an edited file")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise VariantRejected(f"{rel}: not UTF-8 text; only text files can be edited") from None


# ---- edits and ids ----------------------------------------------------------------------------------
def normalize_edits(raw: Sequence[Any], limits: Limits = Limits()) -> tuple[Edit, ...]:
    """Edits from the LLM's output (mappings with ``file``, ``search``, ``replace``, or Edits), line
    endings normalized; VariantRejected for a malformed list."""
    if isinstance(raw, str | bytes) or not isinstance(raw, Sequence) or not raw:
        raise VariantRejected("edits: expected a non-empty list of {file, search, replace}")
    if len(raw) > limits.max_edits:
        raise VariantRejected(f"edits: {len(raw)} edits, over the limit of {limits.max_edits}; make a smaller change")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, Edit):
            item = {"file": item.file, "search": item.search, "replace": item.replace}
        if not isinstance(item, Mapping):
            raise VariantRejected(f"edits[{i}]: expected {{file, search, replace}}, got {type(item).__name__}")
        missing = [k for k in ("file", "search", "replace") if not isinstance(item.get(k), str)]
        if missing:
            raise VariantRejected(f"edits[{i}]: {', '.join(missing)} missing or not a string")
        search, replace = (item[k].replace("\r\n", "\n") for k in ("search", "replace"))
        if not search:
            raise VariantRejected(f"edits[{i}]: empty search text; quote the lines to change")
        if search == replace:
            raise VariantRejected(f"edits[{i}]: replace is identical to search; the edit changes nothing")
        if len(search) + len(replace) > limits.max_edit_chars:
            raise VariantRejected(f"edits[{i}]: {len(search) + len(replace)} characters, over the "
                                  f"{limits.max_edit_chars}-character limit of one edit")
        out.append(Edit(item["file"].strip(), search, replace))
    return tuple(out)


def variant_id(parent: str | None, edits: Sequence[Edit]) -> str:
    """``v`` + 10 hex digits of the SHA-256 of the parent's id and the edits."""
    payload = json.dumps([parent, [[e.file, e.search, e.replace] for e in edits]], ensure_ascii=False)
    return "v" + hashlib.sha256(payload.encode()).hexdigest()[:10]


def make_variant(edits: Sequence[Edit], hypothesis: str = "", parent: str | None = None) -> Variant:
    edits = tuple(edits)
    return Variant(variant_id(parent, edits), parent, edits, hypothesis.strip())


# ---- build: check against the user's tree ---------------------------------------------------------------
@dataclass(frozen=True)
class Built:
    """A checked variant: what it changes in the user's tree."""

    variant: Variant
    chain: tuple[Edit, ...]  # the edits of its ancestors, then its own, in order of application
    base: Mapping[str, str]  # the user's text of each file it changes, when it was built
    files: Mapping[str, str]  # the text of each of those files with the variant applied
    diff: str = field(repr=False)  # unified diff base -> files, a/ b/ paths relative to the workdir

    def stat(self) -> str:
        return diff_stat(self.diff)

    def to_json(self) -> dict[str, Any]:
        """What the store keeps (``Store.add_variant(..., built=)``)."""
        return {"chain": [[e.file, e.search, e.replace] for e in self.chain], "base": dict(self.base),
                "files": dict(self.files)}

    @classmethod
    def from_json(cls, variant: Variant, data: Mapping[str, Any], diff: str) -> Built:
        return cls(variant, tuple(Edit(*e) for e in data["chain"]), dict(data["base"]), dict(data["files"]), diff)


def build(variant: Variant, editable: Editable, parent: Built | None = None, limits: Limits = Limits()) -> Built:
    """Check ``variant`` (stacked on the already built ``parent``) against the user's current tree."""
    if not editable:
        raise VariantRejected("no file is editable: set target.editable to let code be changed")
    if (parent.variant.id if parent else None) != variant.parent:
        raise VariantRejected(f"variant {variant.id} builds on {variant.parent}, which is not known")
    edits = tuple(Edit(editable.check(e.file), e.search, e.replace) for e in normalize_edits(variant.edits, limits))
    files = set(parent.files if parent else {}) | {e.file for e in edits}
    base = {f: (parent.base[f] if parent and f in parent.base else editable.read(f, limits)) for f in sorted(files)}
    current = {**base, **(parent.files if parent else {})}
    for i, e in enumerate(edits):
        current[e.file] = _apply_one(current[e.file], e, f"edits[{i}]")
    for f, text in current.items():
        if len(text.encode()) > limits.max_file_bytes:
            raise VariantRejected(f"{f}: would grow over the {limits.max_file_bytes}-byte limit of an edited file")
        if f.endswith(".py"):
            _compiles(f, text)
    changed = {f: t for f, t in current.items() if t != base[f]}
    if not changed:
        raise VariantRejected("the edits together change nothing")
    chain = (*(parent.chain if parent else ()), *edits)
    return Built(variant, chain, {f: base[f] for f in changed}, changed, unified_diff({f: base[f] for f in changed}, changed))


def _apply_one(text: str, edit: Edit, where: str) -> str:
    n = text.count(edit.search)
    if n == 0:
        raise VariantRejected(f"{where}: search text not found in {edit.file}; quote lines exactly as they are now")
    if n > 1:
        raise VariantRejected(f"{where}: search text occurs {n} times in {edit.file}; include more lines so it "
                              "occurs once")
    return text.replace(edit.search, edit.replace, 1)


def _compiles(file: str, text: str) -> None:
    try:
        compile(text, file, "exec", dont_inherit=True)  # parsed and compiled, never executed
    except SyntaxError as e:
        raise VariantRejected(f"{file}: syntax error at line {e.lineno}: {e.msg}") from None
    except ValueError as e:  # e.g. a NUL byte
        raise VariantRejected(f"{file}: does not compile ({e})") from None


# ---- diffs ----------------------------------------------------------------------------------------------
def unified_diff(base: Mapping[str, str], new: Mapping[str, str]) -> str:
    """A diff ``git apply`` and ``patch -p1`` take: ``a/<file>`` ``b/<file>`` headers, relative paths."""
    out: list[str] = []
    for f in sorted(set(base) | set(new)):
        a, b = base.get(f, ""), new.get(f, "")
        if a == b:
            continue
        lines = difflib.unified_diff(_lines(a), _lines(b), fromfile=f"a/{f}", tofile=f"b/{f}", n=3)
        out.append(f"diff --git a/{f} b/{f}\n")
        out.extend(lines)
    return "".join(out)


def _lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):  # as diff(1) writes it
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines


def diff_stat(diff: str) -> str:
    """``2 files, +5 -3`` for a unified diff."""
    files = sum(1 for line in diff.splitlines() if line.startswith("diff --git "))
    plus = sum(1 for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
    minus = sum(1 for line in diff.splitlines() if line.startswith("-") and not line.startswith("---"))
    return f"{files} file{'s' if files != 1 else ''}, +{plus} -{minus}"


# ---- into a snapshot --------------------------------------------------------------------------------------
def write_into(snapshot: Path | str, built: Built, workdir: Path | str) -> list[str]:
    """Write the variant's files into an experiment's snapshot (a copy of the user's tree taken just
    now). Where the user changed a file since the variant was built, its edits are re-applied to
    the new text (rebased) when they still apply, else the variant keeps its own base of that file.
    Returns a note per such file (empty: the tree is as when the variant was built)."""
    snapshot, workdir = Path(snapshot), Path(workdir)
    notes = []
    for f, text in built.files.items():
        dest = snapshot / f
        if dest.is_symlink() or not dest.resolve().is_relative_to(snapshot.resolve()):
            raise VariantRejected(f"{f}: is a link in the snapshot; the variant is not applied")
        try:
            now = (workdir / f).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            now = None
        if now is not None and now != built.base[f]:
            rebased = _rebase(now, [e for e in built.chain if e.file == f])
            if rebased is not None:
                text = rebased
                notes.append(f"{f}: rebased onto the user's changed file")
            else:
                notes.append(f"{f}: the user's file changed and the edits no longer apply; ran on the variant's own base")
        dest.parent.mkdir(parents=True, exist_ok=True)
        mode = dest.stat().st_mode & 0o777 if dest.exists() else 0o644
        dest.write_text(text, encoding="utf-8")
        os.chmod(dest, mode)
    return notes


def _rebase(text: str, edits: Sequence[Edit]) -> str | None:
    for e in edits:
        if text.count(e.search) != 1:
            return None
        text = text.replace(e.search, e.replace, 1)
    return text
