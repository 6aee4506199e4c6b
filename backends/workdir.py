"""Per-experiment snapshots of the target's code.

Every experiment runs in its own copy of the target directory, taken at submit time, so editing
the code mid-campaign never changes an experiment that is already queued or running (the
workdir race of the system this project grows out of).

The copy is a real copy (no hardlinks or symlinks back into the source), leaves out caches,
VCS data, virtual environments, secrets (``.env*``) and earlier run outputs, and is checked
against a size cap *before* anything is written, so a forgotten dataset fails fast with a hint
instead of filling the disk once per experiment.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from hybrid.errors import ConfigError

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB per experiment is already a lot of "code"

# Left out of every snapshot. A trailing "/" matches directories only; a pattern without "/"
# matches a name at any depth (like .gitignore).
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

    def __init__(self, patterns: Sequence[str]) -> None:
        self._rules: list[tuple[str, bool, bool]] = []  # (glob, dirs_only, anchored to root)
        for raw in patterns:
            pat = str(raw).strip()
            if not pat:
                continue
            dirs_only = pat.endswith("/")
            pat = pat.strip("/")
            if pat.startswith("./"):
                pat = pat[2:]
            self._rules.append((pat, dirs_only, "/" in pat))

    def excluded(self, rel: str, name: str, is_dir: bool) -> bool:
        for pat, dirs_only, anchored in self._rules:
            if dirs_only and not is_dir:
                continue
            if fnmatch.fnmatchcase(rel if anchored else name, pat):
                return True
        return False


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
            if entry.is_symlink():
                if not excluder.excluded(rel, entry.name, False):
                    links.append(rel)
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if rel in skip or excluder.excluded(rel, entry.name, is_dir):
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

    ``exclude`` holds the user's glob patterns (``target.exclude``) on top of ``ALWAYS_EXCLUDED``;
    ``skip`` holds paths never copied, such as the campaign's own directory when it lies inside
    ``src`` (``dst`` itself is always skipped). ``dst`` may already exist (it may hold
    ``params.json``); copied files overwrite same-named ones. Returns ``dst``.

    Raises ConfigError when ``src`` is missing or the copy would exceed ``max_bytes``.
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
    excluder = _Excluder((*ALWAYS_EXCLUDED, *exclude))
    dirs, files, links, top_sizes = _plan(src, excluder, skip_rel)

    total = sum(size for _, size in files)
    if total > max_bytes:
        biggest = sorted(top_sizes.items(), key=lambda kv: -kv[1])[:3]
        listing = ", ".join(f"{name} ({_human(size)})" for name, size in biggest)
        raise ConfigError(
            f"target.workdir: {src} holds {_human(total)} to copy for every experiment, over the "
            f"{_human(max_bytes)} cap (largest: {listing}); leave data, checkpoints and logs out "
            "with target.exclude=[...] (glob patterns, e.g. 'data/' or '*.ckpt')"
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
