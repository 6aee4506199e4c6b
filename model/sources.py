"""Where the GPT target's text comes from: the offline corpus, a folder, or climbmix shards.

Document sources yield ``(name, text)`` in a fixed order; the train/val split is by a hash of
each document's text, so it never depends on order or on the machine. climbmix shards are
downloaded with retries, exponential backoff and HTTP Range resume, and verified as parquet
files with a ``text`` column before use.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from model.errors import ConfigError, ModelError

DOWNLOAD_ATTEMPTS = 5
RETRY_BACKOFF_S = 2.0  # seconds before the 2nd download attempt, doubling after each failure
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}  # not the standard library's own text

Log = Callable[[str], Any]


def offline_documents() -> Iterator[tuple[str, str]]:
    """(name, text) of the offline corpus in its fixed order: pydoc_data.topics by topic, then the
    standard library's .py files ordered by a hash of their path (a fixed shuffle, so a max_chars cap
    samples the whole library). Skipped: site-/dist-packages, __pycache__, files that are not UTF-8."""
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        yield f"pydoc_data.topics:{topic}", topics[topic]
    root = Path(sysconfig.get_paths()["stdlib"])
    for rel in _hash_ordered(_walk(root, (".py",))):
        if rel != "pydoc_data/topics.py":  # its text is the topics above
            try:
                yield rel, (root / rel).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue


def dir_documents(folder: Path) -> Iterator[tuple[str, str]]:
    """(name, text) of every .txt/.md file and every row of every .parquet file's ``text`` column under
    ``folder``, files in a fixed order (by a hash of their path), rows in file order."""
    import pyarrow.parquet as pq

    if not folder.is_dir():
        raise ConfigError(f"data.dir: {folder} is not a folder")
    files = _hash_ordered(_walk(folder, (".txt", ".md", ".parquet")))
    if not files:
        raise ConfigError(f"data.dir: no .txt, .md or .parquet files under {folder}")
    for rel in files:
        path = folder / rel
        if not rel.lower().endswith(".parquet"):
            yield rel, path.read_text(encoding="utf-8", errors="replace")
            continue
        problem = _parquet_problem(path)
        if problem:
            raise ConfigError(f"data.dir: {path}: {problem}")
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["text"]):
            for text in batch.column(0).to_pylist():
                if text:
                    yield f"{rel}:{row}", text
                row += 1


def _walk(root: Path, suffixes: tuple[str, ...]) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        found += [Path(dirpath, f).relative_to(root).as_posix() for f in filenames if f.lower().endswith(suffixes)]
    return found


def _hash_ordered(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda n: hashlib.sha256(n.encode()).digest())


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2**64


def split_of(text: str, val_fraction: float) -> str:
    """'val' or 'train' for a document of the offline/dir sources: by the hash of its text."""
    return "val" if _unit_hash(text) < val_fraction else "train"


def download_climbmix(base_url: str, paths: Sequence[Path], known: Mapping[str, Any], log: Log) -> None:
    """Make each of ``paths`` (shard_NNNNN.parquet) a valid shard: kept when it is one (and matches its
    ``known`` {size, sha256} record, if any), else downloaded from ``base_url`` on up to 8 threads."""
    from concurrent.futures import ThreadPoolExecutor

    with _locked(paths[0].parent / ".lock"):  # every vocab size shares these shards
        need = [p for p in paths if not (p.exists() and (known.get(p.name) in (None, _file_record(p)))
                                         and _parquet_problem(p) is None)]
        if not need:
            return
        log(f"prepare: climbmix: downloading {len(need)} of {len(paths)} shards from {base_url}")
        with ThreadPoolExecutor(max_workers=min(8, len(need))) as pool:
            failed = [e for e in pool.map(lambda p: _download(f"{base_url}/{p.name}", p, log), need) if e]
    if failed:
        raise ModelError(f"climbmix: {len(failed)} of {len(need)} shards failed to download (first: {failed[0]}); "
                          "check the network or data.base_url, then rerun to resume")


def _download(url: str, dest: Path, log: Log) -> str | None:
    """Download ``url`` to ``dest`` via ``dest``.tmp (resumed with an HTTP Range request when a partial
    one is there), with retries and exponential backoff; a file that is short, or that is not a parquet
    file with a text column, is discarded. Returns None on success, else the last error."""
    import requests

    tmp, error = dest.with_name(dest.name + ".tmp"), ""
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            have = tmp.stat().st_size if tmp.exists() else 0
            if have and _parquet_problem(tmp) is None:  # complete, but the rename never happened
                os.replace(tmp, dest)
                return None
            with requests.get(url, stream=True, timeout=(10, 60), headers={"Range": f"bytes={have}-"} if have else {}) as r:
                if r.status_code == 416:  # the partial file is not a prefix of this one: start over
                    tmp.unlink()
                    raise OSError("stale partial download")
                if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                    return f"{url}: HTTP {r.status_code}"  # a wrong URL: retrying will not help
                r.raise_for_status()
                resumed = r.status_code == 206
                total = r.headers.get("Content-Range", "").rpartition("/")[2] if resumed else r.headers.get("Content-Length")
                with open(tmp, "ab" if resumed else "wb") as f:
                    for chunk in r.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
            size = tmp.stat().st_size
            if total and total.isdigit() and not r.headers.get("Content-Encoding") and size != int(total):
                raise OSError(f"incomplete: {size} of {total} bytes")
            problem = _parquet_problem(tmp)
            if problem:
                tmp.unlink()
                raise OSError(f"corrupt download: {problem}")
            os.replace(tmp, dest)
            log(f"prepare: climbmix: {dest.name} ({size / 1e6:.1f} MB)")
            return None
        except (requests.RequestException, OSError) as e:
            error = f"{dest.name}: {e}"
            log(f"prepare: climbmix: attempt {attempt}/{DOWNLOAD_ATTEMPTS} for {dest.name} failed: {e}")
            if attempt < DOWNLOAD_ATTEMPTS:
                time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
    return error


def _parquet_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable parquet file with a ``text`` column, or None when it is."""
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as e:  # truncated, not parquet, unreadable: pyarrow raises several kinds
        return f"not a readable parquet file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None if "text" in names else f"no 'text' column (columns: {', '.join(names)})"


def _file_record(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            return {"size": os.fstat(f.fileno()).st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}
    except OSError:
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
