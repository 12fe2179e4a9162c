import json

import numpy as np
import pytest

from minigpt_jax import data, files
from minigpt_jax.errors import UsageError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20


def test_tokenizer_round_trip_and_json():
    tok = data.CharTokenizer.from_text(TEXT)
    assert tok.itos == sorted(set(TEXT))
    ids = tok.encode(TEXT)
    assert ids.dtype == np.uint16
    assert tok.decode(ids) == TEXT
    again = data.CharTokenizer.from_json(json.loads(json.dumps(tok.to_json())))
    assert again.stoi == tok.stoi and again.decode(ids) == TEXT


def test_encode_names_unknown_characters():
    tok = data.CharTokenizer.from_text("abc")
    with pytest.raises(UsageError, match="'z'"):
        tok.encode("abz")


def test_prepare_writes_nanogpt_split(tmp_path):
    meta = data.prepare(TEXT, tmp_path, block_size=8)
    train, val = data.load_split(tmp_path, "train"), data.load_split(tmp_path, "val")
    n_train = int(len(TEXT) * 0.9)
    assert (len(train), len(val)) == (n_train, len(TEXT) - n_train)
    assert meta == data.load_meta(tmp_path)
    tok = data.CharTokenizer.from_json(meta)
    assert tok.decode(train) + tok.decode(val) == TEXT
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"\xff\xfe bad bytes", "not UTF-8"),
        (b"too short", "train split has 8 characters"),
        (b"0123456789" * 5, "val split has 5 characters"),  # train holds 45 >= 9, val only 5
    ],
)
def test_bad_corpus_is_a_usage_error(tmp_path, payload, message):
    path = tmp_path / "in.txt"
    path.write_bytes(payload)
    with pytest.raises(UsageError, match=message):
        data.prepare(files.read_text(path), tmp_path / "out", block_size=8)
    assert not (tmp_path / "out" / "meta.json").exists()


def _stream(n=200):
    return (np.arange(n) % 50).astype(np.uint16)


def test_batches_shift_and_purity():
    stream = _stream()
    b = data.Batches(stream, batch_size=4, block_size=8, seed=3)
    x, y = b.batch(5)
    assert x.shape == y.shape == (4, 8) and x.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    for row, start in enumerate(b.starts(5)):
        np.testing.assert_array_equal(x[row], stream[start : start + 8])
    # A pure function of (seed, step): a fresh object, any call order, same batch.
    fresh = data.Batches(stream, batch_size=4, block_size=8, seed=3)
    fresh.batch(9)
    np.testing.assert_array_equal(fresh.batch(5)[0], x)
    assert not np.array_equal(b.batch(6)[0], x)
    assert not np.array_equal(
        data.Batches(stream, batch_size=4, block_size=8, seed=4).batch(5)[0], x
    )


def test_epoch_sampling_visits_every_window_once_per_epoch():
    stream = _stream(40)
    b = data.Batches(stream, batch_size=4, block_size=8, seed=0, sampling="epoch")
    n = b.num_windows  # 32 windows: 8 steps per epoch
    first = np.concatenate([b.starts(s) for s in range(8)])
    second = np.concatenate([b.starts(s) for s in range(8, 16)])
    assert sorted(first) == list(range(n)) == sorted(second)
    assert not np.array_equal(first, second)  # a fresh shuffle each epoch


def test_process_slices_make_the_global_batch():
    stream = _stream()
    whole = data.Batches(stream, batch_size=6, block_size=8, seed=1).batch(2)[0]
    parts = [
        data.Batches(
            stream, batch_size=6, block_size=8, seed=1, process_index=i, process_count=3
        ).batch(2)[0]
        for i in range(3)
    ]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_eval_windows_cover_every_target_once():
    stream = _stream(30)
    x, y, w = data.eval_windows(stream, 8)
    assert w.sum() == len(stream) - 1
    np.testing.assert_array_equal(y.reshape(-1)[w.reshape(-1) > 0], stream[1:])
    np.testing.assert_array_equal(x.reshape(-1)[w.reshape(-1) > 0], stream[:-1])


def test_val_fraction_zero_trains_on_everything(tmp_path):
    """minGPT's notebook: the whole text is training data and there is no val split."""
    meta = data.prepare(TEXT, tmp_path, val_fraction=0.0, block_size=8)
    assert meta["val_tokens"] == 0 and len(data.load_split(tmp_path, "train")) == len(TEXT)
    _, splits = data.load_prepared(tmp_path, block_size=8)
    assert len(splits["val"]) == 0
    with pytest.raises(UsageError, match=r"val_fraction must be in \[0, 1\)"):
        data.prepare(TEXT, tmp_path / "x", val_fraction=1.0, block_size=8)


def test_a_prepared_dir_refuses_another_text_or_split(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.txt").write_text(TEXT.upper())
    d = tmp_path / "d"
    data.load_prepared(d, block_size=8, input_path=str(tmp_path / "a.txt"))  # prepares
    data.load_prepared(d, block_size=8, input_path=str(tmp_path / "a.txt"))  # the same: fine
    for path, frac in ((tmp_path / "b.txt", 0.1), (tmp_path / "a.txt", 0.0)):
        with pytest.raises(UsageError, match="prepared from another text or split"):
            data.load_prepared(d, block_size=8, input_path=str(path), val_fraction=frac)


@pytest.mark.parametrize("split", data.SPLITS)
def test_ids_outside_the_vocabulary_are_a_corrupt_data_dir(tmp_path, split):
    """Else they index past the embedding table and the loss turns NaN, blamed on the lr."""
    meta = data.prepare(TEXT, tmp_path, block_size=8)
    ids = np.fromfile(tmp_path / f"{split}.bin", dtype=np.uint16)
    ids[3] = meta["vocab_size"]
    ids.tofile(tmp_path / f"{split}.bin")
    message = f"{split}.bin holds token id {meta['vocab_size']} but .* has {meta['vocab_size']}"
    for load in (
        lambda: data.load_split(tmp_path, split),
        lambda: data.load_prepared(tmp_path, block_size=8),
    ):
        with pytest.raises(UsageError, match=message + ".*run `minigpt prepare` again"):
            load()


def test_a_meta_whose_vocab_size_is_not_its_itos_is_corrupt(tmp_path):
    meta = data.prepare(TEXT, tmp_path, block_size=8)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "vocab_size": 3}))
    with pytest.raises(UsageError, match="corrupt"):
        data.load_meta(tmp_path)
