"""model.prepare: the offline corpus, idempotence and repair, folders, climbmix downloads, the CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import model.sources as sources
from model.data import load_tokenizer, make_loader
from model.errors import ConfigError, ModelError
from model.prepare import DataConfig, data_dir, offline_documents, prepare, split_of

ROOT = Path(__file__).resolve().parents[2]


def quiet(_msg: str) -> None:
    pass


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def file_hashes(folder: Path) -> dict[str, str]:
    return {rel: f["sha256"] for stage in manifest(folder)["stages"].values() for rel, f in stage["files"].items()}


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def english_docs(n: int, offset: int = 0) -> list[str]:
    """Real English text for small test corpora: Python's reference docs, one topic per document."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)[offset:offset + n]]


def test_offline_corpus_is_several_mb_of_real_text_in_a_fixed_order() -> None:
    docs = list(offline_documents())
    assert sum(len(text) for _, text in docs) > 5_000_000
    names = [name for name, _ in docs]
    assert len(set(names)) == len(names) and names == [name for name, _ in offline_documents()]
    assert any(n.startswith("pydoc_data.topics:") for n in names) and sum(n.endswith(".py") for n in names) > 500
    assert not any("site-packages" in n for n in names)
    val = [text for _, text in docs if split_of(text, 0.05) == "val"]
    assert 0.02 < len(val) / len(docs) < 0.09  # the split follows the hash of each text: stable
    assert val == [text for _, text in docs if split_of(text, 0.05) == "val"]


def test_prepare_is_deterministic(prepared_data: Path, prepared_data_cfg: dict[str, Any], tmp_path: Path) -> None:
    again = prepare({**prepared_data_cfg, "cache_dir": str(tmp_path)}, log=quiet)
    assert again != prepared_data and again.name == prepared_data.name
    assert file_hashes(again) == file_hashes(prepared_data)
    stats = manifest(prepared_data)["stages"]["text"]["stats"]
    assert 1_000_000 < stats["train_chars"] + stats["val_chars"] <= 1_500_000 and stats["val_docs"] > 0


def test_a_second_prepare_verifies_and_touches_nothing(prepared_data_cfg: dict[str, Any],
                                                       prepared_data: Path) -> None:
    before = mtimes(prepared_data)
    logs: list[str] = []
    t0 = time.time()
    assert prepare(prepared_data_cfg, log=logs.append) == prepared_data
    assert time.time() - t0 < 1.0
    assert logs and "already prepared" in logs[-1] and "nothing to do" in logs[-1]
    assert mtimes(prepared_data) == before


@pytest.fixture
def copy_of_prepared(prepared_data_cfg: dict[str, Any], prepared_data: Path, tmp_path: Path) -> tuple[dict, Path]:
    """A private copy of the session's dataset, to damage."""
    cfg = {**prepared_data_cfg, "cache_dir": str(tmp_path)}
    shutil.copytree(prepared_data, data_dir(cfg))
    return cfg, data_dir(cfg)


def test_a_corrupt_token_file_is_detected_and_rebuilt(copy_of_prepared: tuple[dict, Path]) -> None:
    cfg, folder = copy_of_prepared
    good, tokenizer_mtime = file_hashes(folder), (folder / "tokenizer.pkl").stat().st_mtime_ns
    data = bytearray((folder / "train.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte off
    (folder / "train.bin").write_bytes(bytes(data))
    logs: list[str] = []
    prepare(cfg, log=logs.append)
    assert any("train.bin" in line and "corrupt" in line for line in logs)
    assert file_hashes(folder) == good and manifest(folder)["complete"]
    assert (folder / "tokenizer.pkl").stat().st_mtime_ns == tokenizer_mtime  # only the tokens were redone


def test_a_deleted_tokenizer_is_rebuilt_alone(copy_of_prepared: tuple[dict, Path]) -> None:
    cfg, folder = copy_of_prepared
    good, tokens_mtime = file_hashes(folder), (folder / "train.bin").stat().st_mtime_ns
    (folder / "tokenizer.pkl").unlink()
    prepare(cfg, log=quiet)
    assert file_hashes(folder) == good  # retrained to the same bytes...
    assert (folder / "train.bin").stat().st_mtime_ns == tokens_mtime  # ...so the tokens stand


def test_an_interrupted_prepare_resumes(copy_of_prepared: tuple[dict, Path]) -> None:
    cfg, folder = copy_of_prepared
    good, state = file_hashes(folder), manifest(folder)
    del state["stages"]["tokens"]  # as if killed while tokenizing: a partial file, no record, not complete
    state["complete"] = False
    (folder / "manifest.json").write_text(json.dumps(state))
    (folder / "val.bin").unlink()
    (folder / "train.bin.tmp").write_bytes(b"\0" * 100)
    with pytest.raises(ConfigError, match="incomplete"):
        load_tokenizer(folder)
    prepare(cfg, log=quiet)
    assert file_hashes(folder) == good and manifest(folder)["complete"]
    assert load_tokenizer(folder).vocab_size == cfg["vocab_size"]


def test_a_changed_setting_rebuilds(copy_of_prepared: tuple[dict, Path]) -> None:
    cfg, folder = copy_of_prepared
    logs: list[str] = []
    prepare({**cfg, "max_chars": 600_000}, log=logs.append)
    assert any("inputs changed" in line for line in logs)
    stats = manifest(folder)["stages"]["text"]["stats"]
    assert stats["train_chars"] + stats["val_chars"] <= 600_000


def test_config_is_checked_and_locates_the_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HYBRID_CACHE", str(tmp_path))
    assert data_dir({}) == tmp_path / "offline-v8192"
    assert data_dir({"vocab_size": "2048"}) == tmp_path / "offline-v2048"  # coexists with the 8192 one
    assert data_dir({"cache_dir": "/x", "source": "climbmix"}) == Path("/x/climbmix-v8192")
    one, two = data_dir({"source": "dir", "dir": "/a"}), data_dir({"source": "dir", "dir": "/b"})
    assert one != two and one.name.startswith("dir-") and one.name.endswith("-v8192")
    assert DataConfig.from_mapping({"max_chars": "2_000_000", "num_shards": 3.0}).max_chars == 2_000_000
    for bad, match in [({"vocab": 1}, r"data\.vocab: unknown key; known: data\.source, data\.cache_dir"),
                       ({"source": "web"}, r"data\.source: 'web' is not one of offline, climbmix, dir"),
                       ({"vocab_size": 100}, r"data\.vocab_size: 100 must be"),
                       ({"vocab_size": 1.5}, r"data\.vocab_size: 1\.5 is not a valid int"),
                       ({"source": "dir"}, r"data\.dir: required"),
                       ({"val_fraction": 1.0}, r"data\.val_fraction")]:
        with pytest.raises(ConfigError, match=match):
            data_dir(bad)


def make_parquet(texts: list[str | None], column: str = "text") -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({column: texts}), buf)
    return buf.getvalue()


def test_a_folder_of_txt_md_and_parquet(tmp_path: Path) -> None:
    src = tmp_path / "corpus"
    (src / "notes").mkdir(parents=True)
    docs = english_docs(40)
    for i, text in enumerate(docs[:10]):
        (src / f"doc{i}.txt").write_text(text)
    for i, text in enumerate(docs[10:20]):
        (src / "notes" / f"note{i}.md").write_text(text)
    (src / "rows.parquet").write_bytes(make_parquet([*docs[20:], None, ""]))
    (src / "ignored.py").write_text("x = 1\n" * 1000)
    cfg = {"source": "dir", "dir": str(src), "cache_dir": str(tmp_path / "cache"), "vocab_size": 300}
    folder = prepare(cfg, log=quiet)
    assert folder == data_dir(cfg)
    stats = manifest(folder)["stages"]["text"]["stats"]
    assert stats["train_docs"] + stats["val_docs"] == 40 and stats["val_docs"] >= 1
    assert stats["train_chars"] + stats["val_chars"] == sum(map(len, docs))
    tok = load_tokenizer(folder)
    assert next(make_loader(tok, folder, "val", 2, 32))[0].shape == (2, 32)
    logs: list[str] = []
    (src / "doc0.txt").write_text("an edited document, " * 50)
    prepare(cfg, log=logs.append)
    assert any("inputs changed" in line for line in logs)  # the folder changed: rebuilt

    (src / "bad.parquet").write_bytes(make_parquet(["a", "b"], column="body"))
    with pytest.raises(ConfigError, match=r"data\.dir: .*bad\.parquet: no 'text' column"):
        prepare(cfg, log=quiet)


def test_a_vocabulary_too_large_for_the_text_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    for i, text in enumerate(english_docs(2)):
        (tmp_path / "src" / f"{i}.txt").write_text(text)
    with pytest.raises(ConfigError, match=r"data\.vocab_size: 60000 is more than .* lower data\.vocab_size"):
        prepare({"source": "dir", "dir": str(tmp_path / "src"), "cache_dir": str(tmp_path), "vocab_size": 60000},
                log=quiet)


class ShardServer:
    """A local stand-in for the Hugging Face file server: serves ``files``, honours Range requests,
    answers 404 for anything else, and sends the first request of each name in ``truncate_once``
    cut in half (with a matching Content-Length, so only the parquet check can notice)."""

    def __init__(self, files: dict[str, bytes], truncate_once: set[str]) -> None:
        self.files, self.truncate_once = files, set(truncate_once)
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                if name in server.truncate_once:
                    server.truncate_once.discard(name)
                    data = data[: len(data) // 2]
                rng = self.headers.get("Range")
                self.send_response(206 if rng else 200)
                if rng:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    data = data[start:]
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/datasets/climbmix"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, name: str) -> int:
        return Counter(n for n, _ in self.requests)[name]


@pytest.fixture
def shard_server() -> Iterator[ShardServer]:
    files = {f"shard_{i:05d}.parquet": make_parquet(english_docs(20, offset=20 * k))
             for k, i in enumerate((0, 1, 6542))}
    server = ShardServer(files, truncate_once={"shard_00001.parquet"})
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_climbmix_downloads_resume_and_refetch_what_is_truncated(shard_server: ShardServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "RETRY_BACKOFF_S", 0.0)
    cfg = {"source": "climbmix", "num_shards": 2, "base_url": shard_server.url, "cache_dir": str(tmp_path),
           "vocab_size": 300}
    shards = tmp_path / "climbmix-shards"
    shards.mkdir()
    whole = shard_server.files["shard_00000.parquet"]
    (shards / "shard_00000.parquet.tmp").write_bytes(whole[:1000])  # a download cut short last time
    logs: list[str] = []
    folder = prepare(cfg, log=logs.append)

    assert shard_server.requests.count(("shard_00000.parquet", "bytes=1000-")) == 1  # resumed, not restarted
    assert shard_server.gets("shard_00001.parquet") == 2  # truncated the first time: caught, fetched again
    assert any("shard_00001.parquet failed" in line and "corrupt" in line for line in logs)
    for name, data in shard_server.files.items():
        assert (shards / name).read_bytes() == data
    assert not list(shards.glob("*.tmp"))
    stats = manifest(folder)["stages"]["tokens"]["stats"]
    assert stats["train_docs"] == 40 and stats["val_docs"] == 20
    assert next(make_loader(load_tokenizer(folder), folder, "train", 2, 64))[0].shape == (2, 64)

    n_requests = len(shard_server.requests)
    logs.clear()
    prepare(cfg, log=logs.append)
    assert len(shard_server.requests) == n_requests and "already prepared" in logs[-1]

    tokenizer_mtime = (folder / "tokenizer.pkl").stat().st_mtime_ns
    (shards / "shard_00001.parquet").write_bytes(shard_server.files["shard_00001.parquet"][:-100])
    prepare(cfg, log=quiet)  # a shard damaged in the cache: fetched again, the rest stands
    assert shard_server.gets("shard_00001.parquet") == 3
    assert (folder / "tokenizer.pkl").stat().st_mtime_ns == tokenizer_mtime

    with pytest.raises(ModelError, match=r"shard_00002\.parquet.* HTTP 404.*data\.base_url"):
        prepare({**cfg, "num_shards": 3}, log=quiet)
    assert shard_server.gets("shard_00002.parquet") == 1  # a 404 is not retried


def run_cli(*args: str, env_cache: Path) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "HYBRID_CACHE": str(env_cache)}
    return subprocess.run([sys.executable, "-m", "model.prepare", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def test_cli_rejects_unknown_keys_in_one_line(tmp_path: Path) -> None:
    for args, key in [(["data.vocab=512"], "data.vocab"), (["vocab_size=512"], "vocab_size")]:
        r = run_cli(*args, env_cache=tmp_path)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.count("\n") == 1
        assert r.stderr.startswith(f"ConfigError: {key}: unknown key; known: ")
        assert "data.source, data.cache_dir," in r.stderr
    assert not any(tmp_path.iterdir())  # nothing was started


def test_cli_prepares_and_then_has_nothing_to_do(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    for i, text in enumerate(english_docs(30)):
        (tmp_path / "src" / f"{i}.md").write_text(text)
    args = ["data.source=dir", f"data.dir={tmp_path / 'src'}", "data.vocab_size=300"]
    first = run_cli(*args, env_cache=tmp_path / "cache")
    assert first.returncode == 0, first.stderr
    assert "prepare: ready at" in first.stdout
    second = run_cli(*args, env_cache=tmp_path / "cache")
    assert second.returncode == 0 and "already prepared" in second.stdout


def test_cli_defaults_follow_the_training_preset() -> None:
    # `python -m model.prepare` must prepare what `python -m model.train` (same preset) reads
    from model.prepare import parse_cli, preset_data

    assert parse_cli(["preset=gpt_tiny"])["vocab_size"] == 2048
    assert parse_cli(["preset=gpt_h100"])["vocab_size"] == 8192
    assert parse_cli(["preset=gpt_tiny", "data.vocab_size=512"])["vocab_size"] == 512
    assert preset_data("gpt_tiny") == {"vocab_size": 2048}
