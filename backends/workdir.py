"""Per-experiment snapshots of the target's code.

Every experiment runs in its own copy of the target directory, taken at submit time, so editing
the code mid-campaign never changes an experiment that is already queued or running (the
workdir race of the system this project grows out of).

The copy is a real copy (no hardlinks or symlinks back into the source), leaves out caches,
VCS data, virtual environments, secrets (``.env*``) and earlier run outputs, and is checked
against a size cap *before* anything is written, so a forgotten dataset fails fast with a hint
instead of filling the disk once per experiment.

What is left out is decided by gitignore rules (``pathspec``'s ``GitIgnoreSpec``, which follows
git's own edge cases): the built-in ``ALWAYS_EXCLUDED`` first, then the user's
``target.exclude``, so as in a ``.gitignore`` a later ``!pattern`` can bring a file back, and a
file inside an excluded directory cannot be brought back (the directory is never entered).
The target's own ``.gitignore`` is not read: a snapshot may need files git ignores (prepared
data, generated code), and an experiment must not depend on the state of the user's VCS.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pathspec

from hybrid.errors import ConfigError

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB per experiment is already a lot of "code"

# Left out of every snapshot (gitignore syntax: a trailing "/" matches directories only; a pattern
# without a "/" before its end matches a name at any depth).
ALWAYS_EXCLUDED: tuple[str, ...] = (
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".ipynb_checkpoints",
    ".hybrid/",  # a backend's bookkeeping inside an experiment workdir
    "runs/",
    "multirun/",
    "outputs/",
    "mlruns/",
    ".venv/",
    "venv/",
    ".env*",
)


class _Excluder:
    """Decides whether a path (relative to the source root) is left out."""

    def __init__(self, user_patterns: Sequence[str]) -> None:
        lines = [*ALWAYS_EXCLUDED]
        for i, raw in enumerate(user_patterns):
            pattern = _normalize(str(raw))
            try:  # one at a time, so an error names the pattern
                pathspec.GitIgnoreSpec.from_lines([pattern])
            except ValueError as e:
                raise ConfigError(
                    f"target.exclude[{i}]: {raw!r} is not a gitignore-style pattern ({e}); write it "
                    "as in a .gitignore, e.g. 'data/', '*.ckpt', '/build' or '!keep.ckpt'"
                ) from e
            lines.append(pattern)
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def excluded(self, rel: str, is_dir: bool) -> bool:
        # A trailing "/" tells pathspec it is a directory (for dir-only patterns such as "data/").
        return self._spec.match_file(f"{rel}/" if is_dir else rel)


def _normalize(pattern: str) -> str:
    """Whitespace around a YAML list item is not part of the pattern; "./x" means the top-level
    x (git would match nothing), as a user writing it intends."""
    pattern = pattern.strip()
    negate = pattern.startswith("!")
    body = pattern[1:] if negate else pattern
    if body.startswith("./"):
        body = "/" + body[2:].lstrip("/")
    return ("!" if negate else "") + body


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _plan(
    src: Path, excluder: _Excluder, skip: set[str]
) -> tuple[list[str], list[tuple[str, int]], list[str], dict[str, int]]:
    """Walk ``src`` once: directories, files with sizes, symlinks, and bytes per top-level entry."""
    dirs: list[str] = []
    files: list[tuple[str, int]] = []
    links: list[str] = []
    top_sizes: dict[str, int] = {}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(src / rel_dir if rel_dir else src) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_symlink():  # git matches a link as a file, even one to a directory
                if not excluder.excluded(rel, False):
                    links.append(rel)
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if rel in skip or excluder.excluded(rel, is_dir):
                continue
            if is_dir:
                dirs.append(rel)
                stack.append(rel)
            elif entry.is_file(follow_symlinks=False):
                size = entry.stat(follow_symlinks=False).st_size
                files.append((rel, size))
                top = rel.split("/", 1)[0]
                top_sizes[top] = top_sizes.get(top, 0) + size
            # sockets, fifos and devices are not code: left out
    return dirs, files, links, top_sizes


def _copy_link(src_root: Path, dst_root: Path, rel: str) -> None:
    """Recreate a symlink: one pointing inside the tree stays relative (so it points into the
    copy); one pointing outside keeps pointing at the same absolute place."""
    link = src_root / rel
    target = os.readlink(link)
    real_root = os.path.realpath(src_root)
    resolved = os.path.realpath(link)
    if resolved == real_root or resolved.startswith(real_root + os.sep):
        inside = os.path.relpath(resolved, real_root)
        new_target = os.path.relpath(os.path.join(dst_root, inside), os.path.dirname(dst_root / rel))
    elif os.path.isabs(target):
        new_target = target
    else:
        new_target = resolved
    os.symlink(new_target, dst_root / rel)


def snapshot(
    src: Path,
    dst: Path,
    exclude: Sequence[str] = (),
    *,
    skip: Sequence[Path] = (),
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Copy the target's code directory ``src`` into the experiment's own directory ``dst``.

    ``exclude`` holds the user's gitignore-style patterns (``target.exclude``), applied after
    ``ALWAYS_EXCLUDED``; ``skip`` holds absolute paths never copied whatever the patterns say,
    such as the campaign's own directory when it lies inside ``src`` (``dst`` itself is always
    skipped). ``dst`` may already exist (it may hold
    ``params.json``); copied files overwrite same-named ones. Returns ``dst``.

    Raises ConfigError when ``src`` is missing, a pattern is invalid or the copy would exceed
    ``max_bytes``.
    """
    src = Path(src).expanduser()
    dst = Path(dst).expanduser()
    if not src.is_dir():
        what = "is not a directory" if src.exists() else "does not exist"
        raise ConfigError(
            f"target.workdir: {src} {what}; set target.workdir to the directory that holds the "
            "target's code (default: the current directory)"
        )
    # Paths to skip, relative to src (only those inside it matter): dst and the campaign's dir.
    real_src = os.path.realpath(src)
    real_dst = os.path.realpath(dst)
    if real_dst == real_src or real_src.startswith(real_dst + os.sep):
        raise ConfigError(
            f"target.workdir: {src} cannot be snapshotted into {dst}, which contains it; "
            "put campaign.dir somewhere else"
        )
    skip_rel = set()
    for path in (dst, *skip):
        real = os.path.realpath(path)
        if real.startswith(real_src + os.sep):
            skip_rel.add(Path(os.path.relpath(real, real_src)).as_posix())
    excluder = _Excluder(exclude)
    dirs, files, links, top_sizes = _plan(src, excluder, skip_rel)

    total = sum(size for _, size in files)
    if total > max_bytes:
        biggest = sorted(top_sizes.items(), key=lambda kv: -kv[1])[:3]
        listing = ", ".join(f"{name} ({_human(size)})" for name, size in biggest)
        raise ConfigError(
            f"target.workdir: {src} holds {_human(total)} to copy for every experiment, over the "
            f"{_human(max_bytes)} cap (largest: {listing}); leave data, checkpoints and logs out "
            "with target.exclude=[...] (gitignore-style patterns, e.g. 'data/' or '*.ckpt')"
        )

    dst.mkdir(parents=True, exist_ok=True)
    for rel in dirs:
        (dst / rel).mkdir(exist_ok=True)
    for rel, _ in files:
        target = dst / rel
        if target.is_symlink():
            target.unlink()
        # copy2 keeps modes (executable scripts) and mtimes; it copies bytes, never links.
        shutil.copy2(src / rel, target, follow_symlinks=False)
    for rel in links:
        target = dst / rel
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            continue  # a real directory already sits there; leave it
        _copy_link(src, dst, rel)
    return dst
