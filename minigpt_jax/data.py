"""Character data: tokenizer, prepare (text -> train.bin / val.bin / meta.json), batches.

Batches are pure functions of (seed, step), so a resumed run needs no iterator state.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np

from minigpt_jax.errors import UsageError
from minigpt_jax.files import atomic_write_bytes, make_dir, read_text

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
DEMO_INPUT = "data/tinyshakespeare/input.txt"  # the Makefile's SHAKESPEARE: make demo's copy
META_FILE = "meta.json"
SPLITS = ("train", "val")


class CharTokenizer:
    """Maps each distinct character of a corpus to an id, sorted as nanoGPT sorts them."""

    def __init__(self, chars: Sequence[str]):
        self.itos = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("CharTokenizer: duplicate characters in the vocabulary")

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:10])
            raise UsageError(
                f"{len(unknown)} character(s) not in the model's vocabulary: {shown}; "
                "use only characters of the training corpus"
            )
        return np.array([self.stoi[c] for c in text], dtype=np.uint16)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {"vocab_size": self.vocab_size, "itos": self.itos, "stoi": self.stoi}

    @classmethod
    def from_json(cls, meta: dict) -> CharTokenizer:
        """From a meta.json; ValueError unless its itos is a list of distinct strings."""
        itos = meta.get("itos") if isinstance(meta, dict) else None
        if not isinstance(itos, list) or not all(isinstance(c, str) for c in itos):
            raise ValueError("no 'itos' list of characters")
        return cls(itos)


def download_shakespeare(dest: pathlib.Path, url: str | None = None) -> pathlib.Path:
    """Fetches Tiny Shakespeare once; offline, says how to pass the file instead."""
    if dest.exists():
        return dest
    url = url or SHAKESPEARE_URL
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            payload = r.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UsageError(
            f"could not download Tiny Shakespeare ({reason}); offline, put a copy at "
            f"{DEMO_INPUT} (where `make demo` looks) or pass it: minigpt prepare --input FILE"
        ) from None
    make_dir(dest.parent, "--data_dir")
    atomic_write_bytes(dest, payload)
    return dest


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prepare(
    text: str, data_dir: str | os.PathLike, *, val_fraction: float = 0.1, block_size: int = 256
) -> dict:
    """Encodes text into data_dir/{train,val}.bin (uint16) and meta.json; nanoGPT's 90/10 split.

    Both splits must hold at least block_size + 1 tokens, so one window fits; val_fraction 0
    trains on the whole text with no val split (minGPT's notebook). Returns the meta.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if block_size < 1:
        raise UsageError(f"block_size must be positive, got {block_size}")
    tok = CharTokenizer.from_text(text)
    if tok.vocab_size > np.iinfo(np.uint16).max + 1:
        raise UsageError(f"{tok.vocab_size} distinct characters do not fit uint16 ids")
    n = len(text)
    n_train = int(n * (1.0 - val_fraction))
    sizes = {"train": n_train, "val": n - n_train}
    for split, size in sizes.items():
        if size < block_size + 1 and (split == "train" or val_fraction > 0):
            raise UsageError(
                f"the {split} split has {size} characters, fewer than block_size + 1 = "
                f"{block_size + 1}; use a longer text or a smaller --block_size"
            )
    out = pathlib.Path(data_dir)
    make_dir(out, "--data_dir")
    ids = tok.encode(text)
    meta = {**tok.to_json(), "train_tokens": sizes["train"], "val_tokens": sizes["val"]}
    # What it was prepared from, so a config naming another text or split is caught.
    meta |= {"source_sha256": _sha256(text), "val_fraction": val_fraction}
    try:
        # meta.json marks a prepared dir: it goes first and comes back last, so an interrupted
        # re-prepare leaves a dir that reads as unprepared, never new bins beside an old meta.
        (out / META_FILE).unlink(missing_ok=True)
        atomic_write_bytes(out / "train.bin", ids[:n_train].tobytes())
        atomic_write_bytes(out / "val.bin", ids[n_train:].tobytes())
        atomic_write_bytes(out / META_FILE, json.dumps(meta, ensure_ascii=False).encode())
    except OSError as e:
        raise UsageError(f"cannot write to {out} ({e.strerror}); pick another --data_dir") from None
    return meta


def load_meta(data_dir: str | os.PathLike) -> dict:
    path = pathlib.Path(data_dir) / META_FILE
    if not path.exists():
        raise UsageError(
            f"{path} not found; run `minigpt prepare --data_dir {data_dir}` first "
            "or point --config.data.dir at a prepared directory"
        )
    try:
        meta = json.loads(path.read_text())
        if meta["vocab_size"] != len(CharTokenizer.from_json(meta).itos):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is unreadable or corrupt; run `minigpt prepare` again") from None
    return meta


def load_split(data_dir: str | os.PathLike, split: str) -> np.ndarray:
    """The split's token ids, memory-mapped (nanoGPT's train.bin / val.bin format), checked
    against the dir's vocabulary: an id past it would index past the embedding table."""
    path = pathlib.Path(data_dir) / f"{split}.bin"
    if not path.exists():
        raise UsageError(f"{path} not found; run `minigpt prepare --data_dir {data_dir}` first")
    if split == "val" and path.stat().st_size == 0:  # prepared with val_fraction 0
        return np.zeros(0, np.uint16)
    try:
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
    except (OSError, ValueError):
        raise UsageError(f"{path} is unreadable or corrupt; run `minigpt prepare` again") from None
    vocab_size = load_meta(data_dir)["vocab_size"]
    top = int(tokens.max())  # one pass over the file: a few ms for a character corpus
    if top >= vocab_size:
        raise UsageError(
            f"{path} holds token id {top} but {pathlib.Path(data_dir) / META_FILE} has "
            f"{vocab_size} characters: the data dir is corrupt; run `minigpt prepare` again"
        )
    return tokens


def load_prepared(
    data_dir: str | os.PathLike,
    *,
    block_size: int,
    input_path: str = "",
    val_fraction: float = 0.1,
) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, {split: tokens}) of a prepared dir; a given input text is prepared on first use.

    Fails with a UsageError, before anything compiles, if a split cannot hold one window.
    """
    if input_path and not (pathlib.Path(data_dir) / META_FILE).exists():
        prepare(read_text(input_path), data_dir, val_fraction=val_fraction, block_size=block_size)
    meta = load_meta(data_dir)
    if input_path and "source_sha256" in meta:
        same_text = meta["source_sha256"] == _sha256(read_text(input_path))
        if not same_text or meta["val_fraction"] != val_fraction:
            raise UsageError(
                f"{data_dir} was prepared from another text or split than data.input={input_path}"
                f" with val_fraction={val_fraction}; pass another --config.data.dir, or delete it"
            )
    splits = {split: load_split(data_dir, split) for split in SPLITS}
    for split, tokens in splits.items():
        if split == "train" or len(tokens):  # an empty val split means: none
            Batches(tokens, batch_size=1, block_size=block_size, seed=0)
    return meta, splits


class Batches:
    """Batch `step` of a token stream, as a pure function of (seed, step).

    sampling='random' draws batch_size random windows per step (nanoGPT's get_batch);
    sampling='epoch' walks a fresh permutation of all windows each epoch, without
    replacement (minGPT's DataLoader(shuffle=True)). With process_count > 1 each process
    gets its own contiguous rows of the same global batch.
    """

    def __init__(
        self,
        data: np.ndarray,
        *,
        batch_size: int,
        block_size: int,
        seed: int | Sequence[int],
        sampling: str = "random",
        process_index: int = 0,
        process_count: int = 1,
    ):
        if sampling not in ("random", "epoch"):
            raise UsageError(f"data.sampling must be 'random' or 'epoch', got {sampling!r}")
        if batch_size % process_count:
            raise UsageError(
                f"batch_size {batch_size} is not divisible by the {process_count} processes"
            )
        self.num_windows = len(data) - block_size
        if self.num_windows < 1:
            raise UsageError(
                f"a split of {len(data)} tokens is too short for block_size {block_size}; "
                "use a smaller block_size or more data"
            )
        self.data = data
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = [seed] if isinstance(seed, int) else list(seed)
        self.sampling = sampling
        rows = batch_size // process_count
        self.rows = slice(process_index * rows, (process_index + 1) * rows)
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            rng = np.random.default_rng([*self.seed, epoch])
            self._perm_cache = (epoch, rng.permutation(self.num_windows))
        return self._perm_cache[1]

    def starts(self, step: int) -> np.ndarray:
        """Start offsets of the global batch's windows."""
        if self.sampling == "random":
            rng = np.random.default_rng([*self.seed, step])
            return rng.integers(0, self.num_windows, size=self.batch_size)
        flat = step * self.batch_size + np.arange(self.batch_size)
        epochs, pos = np.divmod(flat, self.num_windows)
        return np.array([self._permutation(int(e))[p] for e, p in zip(epochs, pos)])

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(x_BxT, y_BxT) int32 for this process; y is x shifted left by one token."""
        starts = self.starts(step)[self.rows]
        idx = starts[:, None] + np.arange(self.block_size + 1)[None, :]
        windows_BxT1 = np.asarray(self.data[idx], dtype=np.int32)
        return windows_BxT1[:, :-1], windows_BxT1[:, 1:]


def eval_windows(data: np.ndarray, block_size: int) -> tuple[np.ndarray, ...]:
    """Every prediction of a split exactly once: non-overlapping windows (x_NxT, y_NxT, w_NxT).

    The last window is zero-padded; w is 1 for real targets and 0 for padding.
    """
    n_targets = len(data) - 1
    n = -(-n_targets // block_size)
    x = np.zeros(n * block_size, np.int32)
    y = np.zeros(n * block_size, np.int32)
    w = np.zeros(n * block_size, np.float32)
    x[:n_targets] = data[:-1]
    y[:n_targets] = data[1:]
    w[:n_targets] = 1.0
    return tuple(a.reshape(n, block_size) for a in (x, y, w))
