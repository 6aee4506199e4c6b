"""Build the GPT target's dataset and tokenizer: ``python -m model.prepare [preset=...] [data.key=value ...]``.

The defaults are those of the model.train preset (``preset=auto``: gpt_tiny on a CPU machine,
vocab 2048; gpt_h100 on a CUDA machine, vocab 8192), so prepare and train agree.

    python -m model.prepare                                    # offline: this Python's stdlib, the preset's vocab
    python -m model.prepare data.vocab_size=2048               # a CPU-sized vocabulary (lives alongside)
    python -m model.prepare data.source=climbmix               # the reference data, from Hugging Face
    python -m model.prepare data.source=dir data.dir=~/texts   # any folder of .txt/.md/.parquet files

Sources (``data.source``):
  offline   text already on this machine, no network: the Python standard library's sources (code and
            docstrings) and its English reference docs (``pydoc_data.topics``), up to data.max_chars.
  climbmix  karpathy/climbmix-400b-shuffle: shard_00000.. (data.num_shards) to train on, the pinned
            shard_06542 to validate on; downloaded with retries and resume into <cache_dir>/climbmix-shards/,
            which every vocab size shares.
  dir       every .txt/.md file (one document each) and .parquet file (a document per row of its ``text``
            column) under data.dir, up to data.max_chars.
For offline and dir, a document is in the val split when the hash of its text falls below
data.val_fraction: the split is stable, and duplicated documents never straddle it.

The result lives in :func:`data_dir`; its files are described in model/data.py. Three stages -- text,
tokenizer, tokens -- are recorded in manifest.json (written atomically after each one; ``complete`` is
set last) with their inputs and the size and sha256 of every file. A rerun verifies all of it and redoes
only the stages whose inputs changed or whose files are missing, partial or corrupt; when nothing is,
it says so and returns. Concurrent runs on one data dir wait for each other (a file lock).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from model.errors import ConfigError, ModelError
from model.sources import (
    Log,
    _file_record,
    _locked,
    _unit_hash,
    _walk,
    dir_documents,
    download_climbmix,
    offline_documents,
    split_of,
)

SOURCES = ("offline", "climbmix", "dir")
CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_VAL_SHARD = 6542  # the last shard, pinned for validation as in the reference
CLIMBMIX_DOC_CAP = 10_000  # characters of each climbmix document the tokenizer learns from (reference)
# GPT-4's split pattern with numbers in groups of at most 2 digits (as nanochat/autoresearch).
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
MANIFEST_FILE = "manifest.json"
FORMAT = 1  # bump when the layout of a data dir changes: old ones are then rebuilt


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``data.*`` keys. Build with :meth:`from_mapping`, which checks names, types and ranges."""

    source: str = "offline"  # offline | climbmix | dir (see the module docstring)
    cache_dir: str | None = None  # root of all data dirs; None: $HYBRID_CACHE, else ~/.cache/hybrid
    vocab_size: int = 8192  # BPE vocabulary, the <|bos|> special token included
    dir: str | None = None  # source=dir: the folder of .txt/.md/.parquet files
    num_shards: int = 10  # source=climbmix: training shards to download (the val shard comes on top)
    max_chars: int = 20_000_000  # offline/dir: cap on the corpus, in characters
    val_fraction: float = 0.05  # offline/dir: share of documents held out for validation
    base_url: str = CLIMBMIX_URL  # source=climbmix: where shard_NNNNN.parquet files are downloaded from
    tokenizer_max_chars: int = 1_000_000_000  # characters of training text the tokenizer learns from

    @classmethod
    def from_mapping(cls, data_cfg: Mapping[str, Any] | DataConfig | None) -> DataConfig:
        if isinstance(data_cfg, DataConfig):
            return data_cfg
        given = dict(data_cfg or {})
        fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            known = ", ".join(f"data.{k}" for k in fields)
            raise ConfigError(f"data.{unknown[0]}: unknown key; known: {known}")
        cfg = cls(**{k: _coerce(k, v, fields[k]) for k, v in given.items()})
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"data.source: {self.source!r} is not one of {', '.join(SOURCES)}")
        if not 257 <= self.vocab_size <= 2**32:
            raise ConfigError(f"data.vocab_size: {self.vocab_size} must be in [257, 2**32] (256 bytes + <|bos|>)")
        if self.source == "dir" and not self.dir:
            raise ConfigError("data.dir: required with data.source=dir (a folder of .txt/.md/.parquet files)")
        if not 1 <= self.num_shards <= CLIMBMIX_VAL_SHARD:
            raise ConfigError(f"data.num_shards: {self.num_shards} must be in [1, {CLIMBMIX_VAL_SHARD}]")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction: {self.val_fraction} must be between 0 and 1 (e.g. 0.05)")
        for key in ("max_chars", "tokenizer_max_chars"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key}: {getattr(self, key)} must be positive")


def _coerce(key: str, value: Any, kind: str) -> Any:
    if value is None and "None" in kind:
        return None
    try:
        if kind == "int" and not isinstance(value, bool):
            number = float(str(value).replace("_", "")) if isinstance(value, str) else value
            if float(number) == int(number):
                return int(number)
        elif kind == "float" and not isinstance(value, bool):
            return float(value)
        elif kind.startswith("str") and isinstance(value, str | int | float):
            return str(value)
    except (TypeError, ValueError, OverflowError):
        pass
    raise ConfigError(f"data.{key}: {value!r} is not a valid {kind.split(' ')[0]}")


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("HYBRID_CACHE") or "~/.cache/hybrid").expanduser()


def data_dir(data_cfg: Mapping[str, Any] | DataConfig | None) -> Path:
    """Where the dataset of this config lives: ``<cache_dir>/<source>[-<hash of data.dir>]-v<vocab_size>``."""
    cfg = DataConfig.from_mapping(data_cfg)
    name = cfg.source
    if cfg.source == "dir":
        name += "-" + _sha256(str(Path(str(cfg.dir)).expanduser().resolve()).encode())[:10]
    return cache_root(cfg) / f"{name}-v{cfg.vocab_size}"


# --------------------------------------------------------------------------------------------- the stages
def prepare(data_cfg: Mapping[str, Any] | DataConfig | None = None, log: Log = print) -> Path:
    """Make the dataset and tokenizer of ``data_cfg`` ready in :func:`data_dir`; returns that dir.
    Idempotent: verifies what is there and redoes only what is missing, changed or corrupt."""
    cfg = DataConfig.from_mapping(data_cfg)
    if cfg.source == "dir" and not Path(str(cfg.dir)).expanduser().is_dir():
        raise ConfigError(f"data.dir: {cfg.dir} is not a folder")
    out = data_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with _locked(out / ".lock"):
        manifest = _read_manifest(out)
        text, built_text = _stage(out, manifest, "text", _text_inputs(cfg),
                                  lambda: _build_text(cfg, out, manifest, log), log)
        tok, built_tok = _stage(out, manifest, "tokenizer",
                                {"vocab_size": cfg.vocab_size, "text": _digest(text), "pattern": SPLIT_PATTERN,
                                 "max_chars": cfg.tokenizer_max_chars},
                                lambda: _build_tokenizer(cfg, out, log), log)
        toks, built_toks = _stage(out, manifest, "tokens", {"text": _digest(text), "tokenizer": _digest(tok)},
                                  lambda: _build_tokens(cfg, out, log), log)
        files = {**text, **tok, **toks}
        size_mb = sum(f["size"] for f in files.values()) / 1e6
        stats = {**manifest["stages"]["text"]["stats"], **manifest["stages"]["tokens"]["stats"]}
        summary = (f"{stats['train_docs']:,} + {stats['val_docs']:,} docs, {stats['train_tokens']:,} train + "
                   f"{stats['val_tokens']:,} val tokens, vocab {cfg.vocab_size}")
        if not (built_text or built_tok or built_toks) and manifest.get("complete"):
            log(f"prepare: already prepared at {out} ({summary}; verified {len(files)} files, {size_mb:.1f} MB, "
                f"in {time.time() - t0:.1f}s); nothing to do")
            return out
        manifest.update(complete=True, config=dataclasses.asdict(cfg), python=sys.version.split()[0])
        _write_manifest(out, manifest)
    log(f"prepare: ready at {out} in {time.time() - t0:.1f}s ({summary})")
    return out


def _text_inputs(cfg: DataConfig) -> dict[str, Any]:
    if cfg.source == "climbmix":
        return {"source": "climbmix", "num_shards": cfg.num_shards, "format": FORMAT}
    inputs: dict[str, Any] = {"source": cfg.source, "max_chars": cfg.max_chars, "val_fraction": cfg.val_fraction,
                              "format": FORMAT}
    if cfg.source == "dir":  # the folder's listing: editing, adding or removing a file rebuilds
        folder = Path(str(cfg.dir)).expanduser().resolve()
        listing = [(rel, (folder / rel).stat().st_size, (folder / rel).stat().st_mtime_ns)
                   for rel in sorted(_walk(folder, (".txt", ".md", ".parquet")))] if folder.is_dir() else []
        inputs.update(dir=str(folder), listing=_sha256(json.dumps(listing).encode()))
    return inputs


def _stage(out: Path, manifest: dict[str, Any], name: str, inputs: dict[str, Any],
           build: Callable[[], tuple[list[str], dict[str, Any]]], log: Log) -> tuple[dict[str, Any], bool]:
    """Reuse stage ``name`` if its inputs are unchanged and its files verify; else build it and record it.
    Returns the stage's {relative path: {size, sha256}} and whether it was built."""
    stages = manifest.setdefault("stages", {})
    record = stages.get(name)
    if record is not None and record.get("inputs") == inputs:
        bad = [rel for rel, want in record["files"].items() if _file_record(out / rel) != want]
        if not bad:
            return record["files"], False
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        log(f"prepare: {name}: {', '.join(bad[:3])}{more} missing, partial or corrupt; redoing")
    elif record is not None:
        log(f"prepare: {name}: inputs changed since it was built; redoing")
    t0 = time.time()
    files, stats = build()
    stats["seconds"] = round(time.time() - t0, 2)
    stages[name] = {"inputs": inputs, "files": {rel: _file_record(out / rel) for rel in files}, "stats": stats}
    manifest["complete"] = False
    _write_manifest(out, manifest)
    return stages[name]["files"], True


def _split_files(cfg: DataConfig, out: Path) -> dict[str, list[Path]]:
    if cfg.source != "climbmix":
        return {split: [out / "text" / f"{split}.parquet"] for split in ("train", "val")}
    shards = cache_root(cfg) / "climbmix-shards"
    return {"train": [shards / f"shard_{i:05d}.parquet" for i in range(min(cfg.num_shards, CLIMBMIX_VAL_SHARD))],
            "val": [shards / f"shard_{CLIMBMIX_VAL_SHARD:05d}.parquet"]}


def _texts(paths: Sequence[Path]) -> Iterator[list[str]]:
    """The ``text`` column of parquet files, in batches of up to 1024 documents."""
    import pyarrow.parquet as pq

    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=["text"]):
            yield [t for t in batch.column(0).to_pylist() if t]


def _build_text(cfg: DataConfig, out: Path, manifest: dict[str, Any], log: Log) -> tuple[list[str], dict[str, Any]]:
    if cfg.source == "climbmix":
        known = manifest.get("stages", {}).get("text", {}).get("files", {})
        paths = [p for split in _split_files(cfg, out).values() for p in split]
        download_climbmix(cfg.base_url, paths, {p.name: known.get(os.path.relpath(p, out)) for p in paths}, log)
        stats = {"train_docs": 0, "val_docs": 0}  # counted by the tokens stage
        return [os.path.relpath(p, out) for p in paths], stats
    import pyarrow as pa
    import pyarrow.parquet as pq

    if cfg.source == "offline":
        docs = offline_documents()
        where = f"offline corpus (Python {sys.version.split()[0]} standard library at {sysconfig.get_paths()['stdlib']})"
    else:
        docs = dir_documents(Path(str(cfg.dir)).expanduser().resolve())
        where = f"data.dir {cfg.dir}"
    splits: dict[str, list[str]] = {"train": [], "val": []}
    chars = 0
    for _, text in docs:
        if not text.strip():
            continue
        if chars + len(text) > cfg.max_chars:
            log(f"prepare: {where} capped at data.max_chars={cfg.max_chars:,}")
            break
        chars += len(text)
        splits[split_of(text, cfg.val_fraction)].append(text)
    if not splits["val"] and len(splits["train"]) > 1:  # a tiny corpus: hold out its lowest-hash document
        splits["val"].append(splits["train"].pop(min(range(len(splits["train"])),
                                                     key=lambda i: _unit_hash(splits["train"][i]))))
    if not splits["train"] or not splits["val"]:
        raise ConfigError(f"data: the {where} has {sum(map(len, splits.values()))} non-empty document(s); "
                          "need at least 2 (one to train on, one to validate on)")
    (out / "text").mkdir(exist_ok=True)
    for split, texts in splits.items():
        tmp = out / "text" / f"{split}.parquet.tmp"
        pq.write_table(pa.table({"text": pa.array(texts, pa.large_string())}), tmp, compression="zstd")
        os.replace(tmp, out / "text" / f"{split}.parquet")
    stats = {f"{s}_{k}": v for s, t in splits.items() for k, v in (("docs", len(t)), ("chars", sum(map(len, t))))}
    log(f"prepare: text: {where}: {stats['train_docs']:,} train docs ({stats['train_chars'] / 1e6:.1f}M chars), "
        f"{stats['val_docs']:,} val docs ({stats['val_chars'] / 1e6:.2f}M chars)")
    return [f"text/{s}.parquet" for s in splits], stats


def _build_tokenizer(cfg: DataConfig, out: Path, log: Log) -> tuple[list[str], dict[str, Any]]:
    from model.data import Tokenizer

    cap = CLIMBMIX_DOC_CAP if cfg.source == "climbmix" else None
    texts = (text[:cap] if cap else text for batch in _texts(_split_files(cfg, out)["train"]) for text in batch)
    t0 = time.time()
    tok, seen = Tokenizer.train(texts, cfg.vocab_size, cfg.tokenizer_max_chars)
    log(f"prepare: tokenizer: BPE with {cfg.vocab_size} tokens trained on {seen / 1e6:.1f}M chars "
        f"in {time.time() - t0:.1f}s")
    return tok.save(out), {"tokenizer_chars": seen}


def _build_tokens(cfg: DataConfig, out: Path, log: Log) -> tuple[list[str], dict[str, Any]]:
    import numpy as np

    from model.data import Tokenizer, token_dtype

    tok = Tokenizer.load(out)
    dtype = token_dtype(tok.vocab_size)
    stats: dict[str, Any] = {"token_dtype": np.dtype(dtype).name}
    t0 = time.time()
    for split, paths in _split_files(cfg, out).items():
        lengths = []
        tmp = out / f"{split}.bin.tmp"
        with open(tmp, "wb") as f:
            for texts in _texts(paths):
                ids = [doc for doc in tok.encode_batch(texts, num_threads=os.cpu_count() or 1) if doc]
                n = np.fromiter((len(doc) + 1 for doc in ids), dtype=np.int64, count=len(ids))
                bos_and_doc = chain.from_iterable(chain.from_iterable(((tok.bos_id,), doc) for doc in ids))
                f.write(np.fromiter(bos_and_doc, dtype=dtype, count=int(n.sum())).tobytes())
                lengths.append(n)
        os.replace(tmp, out / f"{split}.bin")
        offsets = np.concatenate(([0], np.cumsum(np.concatenate(lengths or [np.zeros(0, np.int64)]))))
        with open(out / f"{split}_offsets.npy.tmp", "wb") as f:
            np.save(f, offsets.astype(np.int64))
        os.replace(out / f"{split}_offsets.npy.tmp", out / f"{split}_offsets.npy")
        stats.update({f"{split}_tokens": int(offsets[-1]), f"{split}_docs": len(offsets) - 1})
        if offsets[-1] == 0:
            raise ConfigError(f"data: the {split} split tokenized to nothing; add text")
    log(f"prepare: tokens: {stats['train_tokens']:,} train, {stats['val_tokens']:,} val ({stats['token_dtype']}) "
        f"in {time.time() - t0:.1f}s")
    return [f"{s}{suffix}" for s in ("train", "val") for suffix in (".bin", "_offsets.npy")], stats


# ------------------------------------------------------------------------------------------------ helpers

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(files: Mapping[str, Any]) -> str:  # of a stage's file records: what the next stage was built from
    return _sha256(json.dumps(files, sort_keys=True).encode())


def _read_manifest(out: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        manifest = {}
    return manifest if manifest.get("format") == FORMAT else {"format": FORMAT, "stages": {}}


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / (MANIFEST_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / MANIFEST_FILE)


# ---------------------------------------------------------------------------------------------------- CLI

def parse_cli(args: Sequence[str]) -> dict[str, Any]:
    """``data.key=value`` arguments -> the ``data`` mapping; ConfigError for anything else."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    known = ", ".join(f"data.{f.name}" for f in dataclasses.fields(DataConfig))
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"{arg}: expected data.key=value (e.g. data.vocab_size=2048); known: {known}")
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist(list(args)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"could not parse the arguments: {str(e).splitlines()[0]}") from None
    assert isinstance(given, dict)  # a dotlist always parses to a mapping
    preset = str(given.pop("preset", "auto"))
    for key, value in given.items():
        if key != "data" or not isinstance(value, dict):
            raise ConfigError(f"{key!s}: unknown key; known: preset, {known}")
    # The training preset's data.* settings are the defaults, so that `python -m model.prepare`
    # prepares exactly what `python -m model.train` (same preset) will read.
    data: dict[str, Any] = {**preset_data(preset), **given.get("data", {})}
    DataConfig.from_mapping(data)  # unknown data.* keys and bad values fail here, before any work
    return data


def preset_data(preset: str) -> dict[str, Any]:
    """The ``data`` section of a model.train preset (``auto``: the one model.train would pick)."""
    from model.train import load_config

    return dict(load_config([f"preset={preset}"]).data)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(__doc__)
        return 0
    try:
        prepare(parse_cli(args), log=lambda msg: print(msg, flush=True))
    except ModelError as e:
        one_line = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
        print(f"{type(e).__name__}: {one_line}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:
        print("prepare: interrupted; run it again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
