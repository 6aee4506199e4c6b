"""The tokenizer, the packed loader and bits-per-byte evaluation, on the session's small real dataset."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model.data import evaluate_bpb, load_tokenizer, make_loader
from model.errors import ConfigError

TEXTS = [
    "",
    "hello world",
    "héllo wörld — “curly quotes” and \u2018single\u2019 ones…",
    "日本語のテキスト、中文文本、한국어 텍스트",
    "emoji 🎉 family 👩‍👩‍👧 flag 🇫🇷 skin 👍🏽",
    "control \x00\x01\t\r\n\x7f characters",
    "e\u0301 combining, \ufeff BOM, \U0010fffd private use",
    "<|bos|> is only text here",
    "def f(x):\n    return x ** 2  # 1234567890\n\n\n",
    "   leading and trailing spaces   ",
]


def random_text(rng: random.Random, n: int) -> str:
    """``n`` code points from all over Unicode (surrogates excluded: they have no UTF-8 form)."""
    ranges = [(0x20, 0x7E), (0xA0, 0x2FF), (0x370, 0x3FF), (0x4E00, 0x4FFF), (0xAC00, 0xACFF), (0x1F300, 0x1F64F),
              (0x0, 0x1F), (0xE000, 0xF8FF), (0x10000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(n))


def test_tokenizer_roundtrips_arbitrary_unicode(prepared_data: Path) -> None:
    tok = load_tokenizer(prepared_data)
    rng = random.Random(0)
    texts = TEXTS + [random_text(rng, 300) for _ in range(20)]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.decode(torch.tensor(tok.encode("tensor input"))) == "tensor input"


def test_bos_is_the_special_last_token_with_zero_bytes(prepared_data: Path) -> None:
    tok = load_tokenizer(prepared_data)
    assert tok.vocab_size == 512 == tok.encoding.n_vocab
    assert tok.bos_id == tok.vocab_size - 1
    assert tok.token_bytes.shape == (tok.vocab_size,) and tok.token_bytes.dtype == torch.int64
    assert tok.token_bytes[tok.bos_id] == 0
    assert bool((tok.token_bytes[: tok.bos_id] > 0).all())
    assert tok.bos_id not in tok.encode("<|bos|>")  # user text never produces BOS
    assert tok.decode([tok.bos_id]) == "<|bos|>"


def test_token_bytes_add_up_to_the_utf8_length(prepared_data: Path) -> None:
    tok = load_tokenizer(prepared_data)
    rng = random.Random(1)
    for text in [*TEXTS, *(random_text(rng, 200) for _ in range(10))]:
        ids = tok.encode(text)
        assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    for i in range(tok.bos_id):
        assert tok.token_bytes[i] == len(tok.encoding.decode_single_token_bytes(i))


def test_token_files_stay_within_the_vocabulary(prepared_data: Path) -> None:
    manifest = json.loads((prepared_data / "manifest.json").read_text())
    for split in ("train", "val"):
        tokens = np.memmap(prepared_data / f"{split}.bin", dtype=np.uint16, mode="r")
        offsets = np.load(prepared_data / f"{split}_offsets.npy")
        assert int(tokens.max()) == 511 and offsets[-1] == len(tokens)
        assert (tokens[offsets[:-1]] == 511).all()  # every document starts with BOS
        assert manifest["stages"]["tokens"]["stats"][f"{split}_tokens"] == len(tokens)


def test_load_tokenizer_without_prepare_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"python -m model\.prepare"):
        load_tokenizer(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "complete": False}))
    with pytest.raises(ConfigError, match="incomplete"):
        load_tokenizer(tmp_path)


def test_loader_yields_shifted_int64_batches_with_bos(prepared_data: Path) -> None:
    tok = load_tokenizer(prepared_data)
    loader = make_loader(tok, prepared_data, "train", batch_size=4, seq_len=64)
    batches = [next(loader) for _ in range(50)]
    for x, y in batches:
        assert x.shape == y.shape == (4, 64) and x.dtype == y.dtype == torch.int64
        assert x.device.type == "cpu" and x.is_contiguous() and y.is_contiguous()
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert int(x.max()) < tok.vocab_size and int(x.min()) >= 0
    assert batches[0][0][0, 0] == tok.bos_id  # an epoch starts with a whole document
    assert sum(int((x == tok.bos_id).sum()) for x, _ in batches) > 1
    with pytest.raises(ValueError, match="split"):
        make_loader(tok, prepared_data, "test", 4, 64)


def test_loader_is_deterministic_by_seed(prepared_data: Path) -> None:
    tok = load_tokenizer(prepared_data)

    def take(split: str, seed: int, n: int = 6) -> torch.Tensor:
        loader = make_loader(tok, prepared_data, split, 3, 128, seed=seed)
        return torch.cat([torch.cat(next(loader)) for _ in range(n)])

    assert torch.equal(take("train", 0), take("train", 0))
    assert not torch.equal(take("train", 0), take("train", 1))
    assert torch.equal(take("val", 0), take("val", 7))  # the val split ignores the seed


def fake_split(folder: Path, docs: list[list[int]]) -> None:
    """A data dir holding ``docs`` as its train split (uint32 tokens: a vocabulary past 65536)."""
    flat = np.array([t for doc in docs for t in doc], dtype=np.uint32)
    flat.tofile(folder / "train.bin")
    np.save(folder / "train_offsets.npy", np.concatenate(([0], np.cumsum([len(d) for d in docs]))).astype(np.int64))
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "complete": True}))


def test_packing_uses_every_pair_of_every_document_once_per_epoch(tmp_path: Path) -> None:
    """Documents shorter and longer than a row: each (token, next token) pair of a document is a target
    exactly once before any repeats, and no pair is invented across documents except into BOS."""
    rng = random.Random(0)
    bos, T, B = 0, 32, 4
    docs = [[bos] + [1000 * k + j + 1 for j in range(rng.randint(1, 120))] for k in range(1000)]
    fake_split(tmp_path, docs)
    pairs = Counter((a, b) for doc in docs for a, b in itertools.pairwise(doc))
    loader = make_loader(SimpleNamespace(vocab_size=2**20), tmp_path, "train", B, T, seed=3)
    seen: Counter[tuple[int, int]] = Counter()
    rows_needed = 2 * math.ceil(sum(pairs.values()) / T)
    for _ in range(math.ceil(rows_needed / B)):
        x, y = next(loader)
        seen.update((a, b) for a, b in zip(x.flatten().tolist(), y.flatten().tolist(), strict=True) if b != bos)
        if len(seen) < len(pairs):
            assert max(seen.values()) == 1  # the first epoch has not repeated anything
    assert set(seen) == set(pairs)  # nothing invented, nothing dropped


class ConstantLoss(torch.nn.Module):
    """Stands in for the GPT: a known loss for every target, recording the targets it was shown."""

    def __init__(self, loss: float | None = None) -> None:
        super().__init__()
        self.loss, self.targets = loss, []

    def forward(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        assert reduction == "none" and x.shape == y.shape
        self.targets.append(y.clone())
        if self.loss is None:  # a loss that differs per token: y / 100 nats
            return y.to(torch.float64) / 100
        return torch.full(y.shape, self.loss)


def test_evaluate_bpb_equals_the_hand_computed_value(prepared_data: Path) -> None:
    tok = load_tokenizer(prepared_data)
    B, T = 2, 64
    model = ConstantLoss(2.5)
    bpb = evaluate_bpb(model, tok, prepared_data, B, T, "cpu", eval_tokens=int(2.5 * B * T))
    assert len(model.targets) == 2  # rounded down to whole batches
    targets = torch.cat(model.targets).flatten().tolist()
    counted = [t for t in targets if t != tok.bos_id]
    n_bytes = sum(len(tok.encoding.decode_single_token_bytes(t)) for t in counted)
    assert 0 < len(counted) < len(targets) or tok.bos_id not in targets
    assert bpb == pytest.approx(2.5 * len(counted) / n_bytes / math.log(2), rel=1e-12)

    varying = ConstantLoss()
    bpb = evaluate_bpb(varying, tok, prepared_data, B, T, "cpu", eval_tokens=int(2.5 * B * T))
    assert torch.equal(torch.cat(varying.targets), torch.cat(model.targets))  # the same fixed tokens
    assert bpb == pytest.approx(sum(counted) / 100 / n_bytes / math.log(2), rel=1e-9)

    first_val = make_loader(tok, prepared_data, "val", B, T)
    assert torch.equal(model.targets[0], next(first_val)[1])  # the first tokens of the val split


def test_evaluate_bpb_is_deterministic_and_takes_at_least_one_batch(prepared_data: Path) -> None:
    tok = load_tokenizer(prepared_data)
    model = ConstantLoss()
    runs = [evaluate_bpb(model, tok, prepared_data, 2, 32, "cpu", eval_tokens=256) for _ in range(2)]
    assert runs[0] == runs[1]
    model.targets.clear()
    evaluate_bpb(model, tok, prepared_data, 2, 32, "cpu", eval_tokens=1)
    assert len(model.targets) == 1


def test_evaluate_bpb_never_counts_the_val_split_twice(prepared_data: Path) -> None:
    tok = load_tokenizer(prepared_data)
    n_val = len(np.memmap(prepared_data / "val.bin", dtype=np.uint16, mode="r"))
    model = ConstantLoss(1.0)
    with pytest.warns(UserWarning, match="more than the validation split holds"):
        evaluate_bpb(model, tok, prepared_data, 4, 64, "cpu", eval_tokens=10 * n_val)
    assert len(model.targets) == n_val // (4 * 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_loader_matches_the_cpu_one_and_evaluates_the_same(prepared_data: Path) -> None:
    """The pinned, non-blocking, double-buffered path: every batch (all kept alive) equals the CPU one."""
    tok = load_tokenizer(prepared_data)
    cpu, gpu = (make_loader(tok, prepared_data, "train", 8, 128, device=d, seed=5) for d in ("cpu", "cuda"))
    kept = [next(gpu) for _ in range(40)]
    for x, y in kept:
        cx, cy = next(cpu)
        assert x.device.type == "cuda" and torch.equal(x.cpu(), cx) and torch.equal(y.cpu(), cy)
    on_cpu = evaluate_bpb(ConstantLoss(), tok, prepared_data, 4, 64, "cpu", eval_tokens=1024)
    on_gpu = evaluate_bpb(ConstantLoss(), tok, prepared_data, 4, 64, "cuda", eval_tokens=1024)
    assert on_gpu == pytest.approx(on_cpu, rel=1e-12)
