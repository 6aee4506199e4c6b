"""Per-experiment snapshots of the target's code (backends/workdir.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends.workdir import snapshot
from hybrid.errors import ConfigError


def files_in(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.add(Path(os.path.relpath(os.path.join(dirpath, name), root)).as_posix())
    return out


def make_tree(root: Path, paths: list[str]) -> None:
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {rel}")


def test_caches_vcs_envs_and_run_outputs_are_left_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    kept = ["train.py", "model/gpt.py", "model/data/vocab.txt", "README.md", "conf/runs.yaml", "outputs.py"]
    dropped = [
        ".git/config",
        "__pycache__/train.cpython-311.pyc",
        "model/__pycache__/gpt.cpython-311.pyc",
        "stray.pyc",
        ".pytest_cache/v/cache",
        ".mypy_cache/x.json",
        ".ruff_cache/y",
        "runs/old/state.sqlite",
        "model/runs/x.log",
        "multirun/2024/a.txt",
        "outputs/2024/b.txt",
        "mlruns/0/meta.yaml",
        ".venv/bin/python",
        "venv/lib/x.py",
        ".env",
        ".env.local",
        ".hybrid/exit.json",
    ]
    make_tree(src, kept + dropped)
    dst = snapshot(src, tmp_path / "exp")
    assert dst == tmp_path / "exp"
    assert files_in(dst) == set(kept)
    assert (dst / "model" / "gpt.py").read_text() == "content of model/gpt.py"


def test_user_patterns_add_to_the_built_in_ones(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, ["train.py", "data/big.bin", "ckpt/a.ckpt", "b.ckpt", "logs/x/run.log", "logs/keep.md"])
    snapshot(src, tmp_path / "exp", exclude=["data/", "*.ckpt", "logs/x/*"])
    assert files_in(tmp_path / "exp") == {"train.py", "logs/keep.md"}


def test_a_destination_inside_the_source_is_not_copied_into_itself(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, ["train.py"])
    campaign = src / "results" / "my-campaign"
    snapshot(src, campaign / "e1")
    snapshot(src, campaign / "e2", skip=[campaign])
    assert files_in(campaign / "e1") == {"train.py"}
    assert files_in(campaign / "e2") == {"train.py"}  # not e1's copy again
    with pytest.raises(ConfigError, match=r"^target\.workdir: .*contains it"):
        snapshot(src, src)


def test_a_missing_source_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^target.workdir: .*nowhere does not exist"):
        snapshot(tmp_path / "nowhere", tmp_path / "exp")


def test_a_too_large_tree_is_refused_before_copying(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, ["train.py"])
    (src / "data").mkdir()
    (src / "data" / "shard.bin").write_bytes(b"x" * 5000)
    with pytest.raises(ConfigError) as err:
        snapshot(src, tmp_path / "exp", max_bytes=1000)
    message = str(err.value)
    assert message.startswith("target.workdir:") and "target.exclude" in message and "data" in message
    assert not (tmp_path / "exp").exists()
    snapshot(src, tmp_path / "exp", exclude=["data/"], max_bytes=1000)  # the suggested fix works
    assert files_in(tmp_path / "exp") == {"train.py"}


def test_snapshots_are_independent_copies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, ["train.py"])
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    first = snapshot(src, tmp_path / "e1")
    (src / "train.py").write_text("edited")
    second = snapshot(src, tmp_path / "e2")
    assert (first / "train.py").read_text() == "content of train.py"
    assert (second / "train.py").read_text() == "edited"
    (first / "train.py").write_text("changed by the experiment")
    assert (src / "train.py").read_text() == "edited"
    assert not os.path.samefile(first / "train.py", src / "train.py")
    assert os.access(first / "run.sh", os.X_OK)


def test_symlinks_inside_the_tree_stay_links_into_the_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, ["model/gpt.py"])
    outside = tmp_path / "datasets"
    outside.mkdir()
    (src / "gpt.py").symlink_to("model/gpt.py")
    (src / "latest").symlink_to(src / "model")  # absolute, but inside the tree
    (src / "data").symlink_to(outside)  # a dataset elsewhere: linked, not copied
    dst = snapshot(src, tmp_path / "exp")
    assert os.readlink(dst / "gpt.py") == "model/gpt.py"
    assert (dst / "latest").resolve() == (dst / "model").resolve()
    assert (dst / "data").resolve() == outside.resolve()
    (dst / "model" / "gpt.py").write_text("changed in the copy")
    assert (src / "model" / "gpt.py").read_text() == "content of model/gpt.py"


def test_an_existing_destination_keeps_its_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, ["train.py"])
    dst = tmp_path / "exp"
    dst.mkdir()
    (dst / "params.json").write_text("{}")
    snapshot(src, dst)
    assert files_in(dst) == {"train.py", "params.json"}


# ---- gitignore semantics of target.exclude --------------------------------------------------------
def copied(tmp_path: Path, paths: list[str], exclude: list[str]) -> set[str]:
    src = tmp_path / "src"
    make_tree(src, paths)
    return files_in(snapshot(src, tmp_path / "exp", exclude=exclude))


def test_a_name_pattern_matches_at_any_depth(tmp_path: Path) -> None:
    paths = ["train.py", "a.ckpt", "deep/er/b.ckpt", "ckpt.py", "notes.ckpt.txt"]
    assert copied(tmp_path, paths, ["*.ckpt"]) == {"train.py", "ckpt.py", "notes.ckpt.txt"}


def test_a_trailing_slash_matches_directories_only(tmp_path: Path) -> None:
    paths = ["train.py", "data/shard.bin", "model/data/vocab.txt", "model/data.py", "tools/data"]
    # `tools/data` is a file: `data/` leaves it, as git would.
    assert copied(tmp_path, paths, ["data/"]) == {"train.py", "model/data.py", "tools/data"}


def test_a_leading_slash_anchors_to_the_target_root(tmp_path: Path) -> None:
    paths = ["train.py", "build/out.o", "tools/build/make.py"]
    assert copied(tmp_path, paths, ["/build"]) == {"train.py", "tools/build/make.py"}
    # "./build" is read the same way (git itself would match nothing).
    assert copied(tmp_path / "dot", paths, ["./build"]) == {"train.py", "tools/build/make.py"}


def test_a_negation_brings_a_file_back(tmp_path: Path) -> None:
    paths = ["train.py", "old.ckpt", "keep.ckpt", "sub/keep.ckpt", "sub/other.ckpt", ".env", ".env.example"]
    # Later patterns win, over the built-in ones too (.env* is built in).
    assert copied(tmp_path, paths, ["*.ckpt", "!keep.ckpt", "!.env.example"]) == {
        "train.py",
        "keep.ckpt",
        "sub/keep.ckpt",
        ".env.example",
    }


def test_a_file_inside_an_excluded_directory_stays_out(tmp_path: Path) -> None:
    # git: "It is not possible to re-include a file if a parent directory of that file is excluded".
    paths = ["train.py", "data/keep.txt", "data/big.bin"]
    assert copied(tmp_path, paths, ["data/", "!data/keep.txt"]) == {"train.py"}
    assert copied(tmp_path / "files", paths, ["data/*", "!data/keep.txt"]) == {"train.py", "data/keep.txt"}


def test_nested_patterns_follow_gitignore(tmp_path: Path) -> None:
    paths = [
        "logs/a.log",
        "logs/sub/b.log",  # `*` does not cross a "/"
        "model/cache/x.bin",
        "cache/y.bin",
        "docs/img/deep/fig.png",
        "docs/readme.md",
        "src/docs/fig.png",  # `docs/**` is anchored: it has a "/" before its end
    ]
    exclude = ["logs/*.log", "**/cache/", "docs/**/*.png"]
    assert copied(tmp_path, paths, exclude) == {"logs/sub/b.log", "docs/readme.md", "src/docs/fig.png"}


@pytest.mark.parametrize("pattern", ["!", "\\"])
def test_an_invalid_pattern_is_a_config_error_naming_it(tmp_path: Path, pattern: str) -> None:
    src = tmp_path / "src"
    make_tree(src, ["train.py"])
    with pytest.raises(ConfigError, match=r"^target\.exclude\[1\]: .* is not a gitignore-style pattern"):
        snapshot(src, tmp_path / "exp", exclude=["*.ckpt", pattern])
    assert not (tmp_path / "exp").exists()
