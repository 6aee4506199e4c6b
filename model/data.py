"""The runtime side of the data: tokenizer, packed batch loader, bits-per-byte evaluation.

Everything here reads what ``python -m model.prepare`` wrote into a data dir (:func:`data_dir`)::

    tokenizer.pkl            the BPE: split pattern + mergeable ranks (a plain dict, not a tiktoken object)
    token_bytes.pt           int64 (vocab_size,): UTF-8 length of each token, 0 for <|bos|>
    {train,val}.bin          every document as <|bos|> + its tokens, concatenated (uint16; uint32 past 65536)
    {train,val}_offsets.npy  int64 (n_docs + 1,): where each document starts in the .bin

Packing (:func:`make_loader`) is best-fit, as in the reference (autoresearch/nanochat): a row of T+1
tokens takes the largest buffered document that still fits whole; when none fits, the shortest one is
cut to fill the row. Unlike the reference, the cut-off rest goes back into the buffer instead of being
dropped -- documents longer than a row (most of the offline code corpus at seq_len 256) are used whole:
the rest starts the next row, overlapping the cut by one token, so every next-token pair of a document
is a target exactly once per epoch, and a token only ever follows its own document's context or BOS.
The buffer holds min(1000, n_docs / 64) documents: on a corpus of millions of documents that is the
reference's 1000; on a small one (the offline corpus has ~1200) it keeps the stream close to the
shuffled document order instead of sorting a whole epoch by length. Epochs are drained before the
next begins; the train split is shuffled per (seed, epoch), the val split is read in order, so its
first N tokens are the same for every call and every seed.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import pickle
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.errors import ConfigError
from model.prepare import MANIFEST_FILE, SPLIT_PATTERN, data_dir

__all__ = ["BOS", "SPLIT_PATTERN", "Tokenizer", "data_dir", "evaluate_bpb", "is_prepared", "load_tokenizer",
           "make_loader", "token_dtype"]

BOS = "<|bos|>"
TOKENIZER_FILE = "tokenizer.pkl"
TOKEN_BYTES_FILE = "token_bytes.pt"
BUFFER_DOCS = 1000  # most documents the packer chooses from (the reference's buffer size)


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """The dtype of the .bin token files for a vocabulary of this size."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class Tokenizer:
    """Byte-level BPE with one special token, ``<|bos|>``, whose id is the last one (vocab_size - 1).

    Encoding runs in tiktoken (Rust; batches on several threads); ``encoding`` is the tiktoken.Encoding.
    ``token_bytes`` (vocab_size,) int64 is the UTF-8 length of each token, 0 for <|bos|>.
    """

    def __init__(self, pattern: str, mergeable_ranks: dict[bytes, int]) -> None:
        import tiktoken

        n = len(mergeable_ranks)
        if sorted(mergeable_ranks.values()) != list(range(n)):
            raise ValueError("mergeable ranks must be the ids 0..n-1")
        self.pattern = pattern
        self.mergeable_ranks = mergeable_ranks
        self.bos_id: int = n
        self.vocab_size: int = n + 1
        self.encoding = tiktoken.Encoding(name=f"hybrid-bpe-{n + 1}", pat_str=pattern, mergeable_ranks=mergeable_ranks,
                                          special_tokens={BOS: n}, explicit_n_vocab=n + 1)
        lengths = [0] * (n + 1)
        for token, rank in mergeable_ranks.items():
            lengths[rank] = len(token)
        self.token_bytes = torch.tensor(lengths, dtype=torch.int64)  # (vocab_size,)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, max_chars: int) -> tuple[Tokenizer, int]:
        """Learn a BPE of ``vocab_size`` tokens (<|bos|> included) from the first ``max_chars``
        characters of ``texts`` with rustbpe; returns it and the characters it saw."""
        import rustbpe

        seen = 0

        def capped() -> Iterator[str]:
            nonlocal seen
            for text in texts:
                seen += len(text)
                yield text
                if seen >= max_chars:
                    return

        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(capped(), vocab_size - 1, pattern=SPLIT_PATTERN)
        ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
        if len(ranks) != vocab_size - 1:
            raise ConfigError(f"data.vocab_size: {vocab_size} is more than {seen:,} characters of training text can "
                              f"fill (BPE stops at {len(ranks) + 1}); lower data.vocab_size or add text "
                              "(data.max_chars, data.dir)")
        return cls(SPLIT_PATTERN, ranks), seen

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS. Text that looks like ``<|bos|>`` is encoded as plain text."""
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 0) -> list[list[int]]:
        """``encode`` of each text, on ``num_threads`` threads (0: up to 8, as many as there are cores)."""
        return self.encoding.encode_ordinary_batch(list(texts), num_threads=num_threads or _threads())

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.encoding.decode(list(ids))

    def save(self, folder: Path) -> list[str]:
        """Write tokenizer.pkl and token_bytes.pt into ``folder`` (each atomically); returns their names."""
        state = {"pattern": self.pattern, "mergeable_ranks": self.mergeable_ranks, "bos": BOS}
        tmp = folder / (TOKENIZER_FILE + ".tmp")
        tmp.write_bytes(pickle.dumps(state, protocol=4))
        os.replace(tmp, folder / TOKENIZER_FILE)
        tmp = folder / (TOKEN_BYTES_FILE + ".tmp")
        torch.save(self.token_bytes, tmp)
        os.replace(tmp, folder / TOKEN_BYTES_FILE)
        return [TOKENIZER_FILE, TOKEN_BYTES_FILE]

    @classmethod
    def load(cls, folder: Path) -> Tokenizer:
        """Read what :meth:`save` wrote (no check that the rest of the dataset is there)."""
        with open(Path(folder) / TOKENIZER_FILE, "rb") as f:
            state = pickle.load(f)
        tok = cls(state["pattern"], state["mergeable_ranks"])
        saved = torch.load(Path(folder) / TOKEN_BYTES_FILE)
        if not torch.equal(saved, tok.token_bytes):
            raise ConfigError(f"data: {folder / TOKEN_BYTES_FILE} does not match the tokenizer; "
                              "rerun `python -m model.prepare` with the same data.* settings to repair it")
        return tok


def _manifest_complete(folder: Path) -> bool | None:
    """Whether model.prepare finished in ``folder``: True, False (started, not finished), None (no manifest)."""
    try:
        return bool(json.loads((Path(folder) / MANIFEST_FILE).read_text()).get("complete", False))
    except (OSError, ValueError):
        return None


def is_prepared(folder: Path | str) -> bool:
    """Whether ``python -m model.prepare`` completed in this data dir (its manifest says so; the files
    are verified by model.prepare, not here: this is the cheap check made before every run)."""
    return _manifest_complete(Path(folder)) is True


def _require_prepared(folder: Path) -> None:
    complete = _manifest_complete(folder)
    if not complete:
        state = "no prepared dataset" if complete is None else "an incomplete dataset (interrupted?)"
        raise ConfigError(f"data: {state} at {folder}; run `python -m model.prepare` with the same data.* "
                          "settings (e.g. data.vocab_size=...) first")


def load_tokenizer(data_dir: Path | str) -> Tokenizer:
    """The tokenizer of a prepared data dir; ConfigError naming ``python -m model.prepare`` if there is none."""
    folder = Path(data_dir)
    _require_prepared(folder)
    return Tokenizer.load(folder)


def _open_split(folder: Path, split: str, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    _require_prepared(folder)
    tokens = np.memmap(folder / f"{split}.bin", dtype=token_dtype(vocab_size), mode="r")
    offsets = np.load(folder / f"{split}_offsets.npy")
    return tokens, offsets


class _Packer:
    """Fills rows of ``row_len`` tokens best-fit from a buffer of documents (see the module docstring).

    ``tokens``: the split's token file; ``offsets``: (n_docs + 1,) document starts in it;
    ``seed``: shuffle each epoch with (seed, epoch), or None for file order.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, row_len: int, seed: int | None) -> None:
        if len(offsets) < 2 or offsets[-1] - offsets[0] < 2:
            raise ValueError("no documents to pack")
        self.tokens, self.offsets, self.row_len, self.seed = tokens, offsets, row_len, seed
        self.buffer_docs = max(1, min(BUFFER_DOCS, (len(offsets) - 1) // 64))
        self.epoch = 0
        self._order: Iterator[int] = iter(())
        self._buffer: list[tuple[int, int, int]] = []  # whole documents: (length, arrival, start), sorted
        self._rest: tuple[int, int] | None = None  # (start, length) of a cut document's remainder
        self._arrival = itertools.count()

    def _next_epoch(self) -> None:
        self.epoch += 1
        n = len(self.offsets) - 1
        if self.seed is None:
            self._order = iter(range(n))
        else:
            self._order = iter(np.random.default_rng([self.seed, self.epoch]).permutation(n).tolist())

    def _refill(self) -> None:
        while len(self._buffer) < self.buffer_docs:
            i = next(self._order, None)
            if i is None:
                if self._buffer:  # drain this epoch before the next one starts
                    return
                self._next_epoch()
                continue
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            if end - start >= 2:
                bisect.insort(self._buffer, (end - start, next(self._arrival), start))

    def fill(self, row: np.ndarray) -> None:
        """Write ``row_len`` tokens into ``row`` (a 1-D int64 array)."""
        pos = 0
        if self._rest is not None:  # the rest of the document cut at the end of the previous row
            start, length = self._rest
            self._rest = None
            pos = self._place(row, 0, start, length)
        while pos < self.row_len:
            self._refill()
            room = self.row_len - pos
            i = bisect.bisect_right(self._buffer, (room, math.inf)) - 1  # the largest document that fits
            length, _, start = self._buffer.pop(max(i, 0))  # none fits: the shortest, cut
            pos = self._place(row, pos, start, length)

    def _place(self, row: np.ndarray, pos: int, start: int, length: int) -> int:
        """Copy what fits of tokens[start:start+length] to row[pos:]; what does not is kept to start the
        next row, from the last token copied (a target here, an input there: no pair is lost)."""
        n = min(length, self.row_len - pos)
        row[pos:pos + n] = self.tokens[start:start + n]
        if n < length:
            self._rest = (start + n - 1, length - n + 1)
        return pos + n


def make_loader(tokenizer: Tokenizer, data_dir: Path | str, split: str, batch_size: int, seq_len: int,
                device: str | torch.device = "cpu", seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches ``(x, y)``, both (B, T) int64 on ``device``, ``y`` = ``x`` shifted left by one.

    Documents start with BOS and are packed best-fit into the rows (module docstring). The train split
    is shuffled by ``seed``; the val split ignores it. On CUDA, rows go through pinned memory with
    non-blocking copies (two host buffers, so filling one never races the copy out of the other).
    """
    tokens, offsets = _open_split(Path(data_dir), split, tokenizer.vocab_size)
    packer = _Packer(tokens, offsets, seq_len + 1, seed if split == "train" else None)
    return _batches(packer, batch_size, seq_len, torch.device(device))


def _batches(packer: _Packer, B: int, T: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    rows = np.empty((B, T + 1), dtype=np.int64)
    if device.type != "cuda":
        while True:
            for r in range(B):
                packer.fill(rows[r])
            x, y = torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())
            yield x.to(device), y.to(device)
    hosts = [torch.empty((2, B, T), dtype=torch.int64).pin_memory() for _ in range(2)]
    copied: list[Any] = [None, None]  # torch.cuda.Event after each host buffer's last copy
    for i in itertools.cycle((0, 1)):
        for r in range(B):
            packer.fill(rows[r])
        if copied[i] is not None:
            copied[i].synchronize()
        host = hosts[i]
        host[0].copy_(torch.from_numpy(rows[:, :-1]))
        host[1].copy_(torch.from_numpy(rows[:, 1:]))
        xy = host.to(device, non_blocking=True)  # (2, B, T)
        copied[i] = torch.cuda.Event()
        copied[i].record()
        yield xy[0], xy[1]


@torch.no_grad()
def evaluate_bpb(model: Any, tokenizer: Tokenizer, data_dir: Path | str, batch_size: int, seq_len: int,
                 device: str | torch.device, eval_tokens: int) -> float:
    """Bits per byte of ``model`` on the first ``eval_tokens`` tokens of the val split (packed as by
    :func:`make_loader`, so the set depends on ``seq_len`` but not on the seed or on earlier calls).

    ``model(x, y, reduction="none")`` must return the per-token losses in nats, (B, T).
    bpb = sum(loss over targets with bytes) / sum(bytes of the targets) / ln 2; BOS targets have 0 bytes
    and count in neither sum. ``eval_tokens`` is rounded down to whole batches of B*T (at least one) and
    capped at the size of the val split (with a warning) rather than counting its tokens twice.
    """
    device = torch.device(device)
    folder = Path(data_dir)
    n_val = len(_open_split(folder, "val", tokenizer.vocab_size)[0])
    per_batch = batch_size * seq_len
    if eval_tokens > n_val:
        warnings.warn(f"evaluate_bpb: eval_tokens={eval_tokens} is more than the validation split holds "
                      f"({n_val} tokens in {folder}); evaluating {max(1, n_val // per_batch) * per_batch}",
                      stacklevel=2)
    steps = max(1, min(eval_tokens, n_val) // per_batch)
    token_bytes = tokenizer.token_bytes.to(device)
    acc = torch.float32 if device.type == "mps" else torch.float64
    total_nats = torch.zeros((), dtype=acc, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    loader = make_loader(tokenizer, folder, "val", batch_size, seq_len, device)
    for _ in range(steps):
        x, y = next(loader)
        loss = model(x, y, reduction="none").reshape(y.shape)  # (B, T) nats
        nbytes = token_bytes[y]  # (B, T)
        total_nats += torch.where(nbytes > 0, loss.to(acc), 0.0).sum()
        total_bytes += nbytes.sum()
    n_bytes = int(total_bytes.item())
    if n_bytes == 0:
        raise ValueError("evaluate_bpb: the evaluated targets hold no bytes")
    return float(total_nats.item()) / (math.log(2) * n_bytes)
