"""train.wandb_project: a run's scalars and config in a wandb run (offline here: no server, no
network), its files in the workdir, the same wandb run continued by a resume."""

import copy
import io
import json
import pathlib
import struct
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import ROOT, one_line_error, tiny_config

from minigpt_jax import config, metrics, train, wandb_sink
from minigpt_jax.errors import UsageError

SMOKE = str(ROOT / "configs/shakespeare_char.py:smoke")
BLOCK = 32768  # the transaction log's block: leveldb's log format


@pytest.fixture
def offline(monkeypatch, tmp_path) -> pathlib.Path:
    """wandb offline and silent, every folder of its own in tmp_path, an unreachable server, and
    an empty current directory (returned), which a run must leave empty."""
    pytest.importorskip("wandb")  # the extra: `make test` installs it
    home = tmp_path / "wandb_home"
    for name in ("dir", "config_dir", "cache_dir", "data_dir"):
        (home / name).mkdir(parents=True)
        monkeypatch.setenv(f"WANDB_{name.upper()}", str(home / name))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _records(data: bytes) -> Iterator:
    """The protobuf Records of a run-ID.wandb file: after a 7-byte header (':W&B', 0xBEE1,
    version 0), leveldb log framing: 32 KiB blocks of chunks, each with a 7-byte header (crc32,
    length, type: 1 full, 2 first, 3 middle, 4 last); a block's last < 7 bytes are padding."""
    from wandb.proto import wandb_internal_pb2

    assert data[:7] == b":W&B\xe1\xbe\x00", data[:7]
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            return  # a chunk still being written
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_runs(workdir: pathlib.Path) -> list[dict]:
    """The offline runs under workdir/wandb, oldest first, read from their transaction logs:
    id, name, config, history ({step: {key: value}}; wandb's own _keys left out), exit_code."""
    return [_read_run(log) for log in sorted(workdir.glob("wandb/offline-run-*/run-*.wandb"))]


def _read_run(log: pathlib.Path, timeout: float = 30.0) -> dict:
    """One transaction log, once it is whole: wandb 0.31's finish() returns before its service
    has flushed the log (measured here: 7 bytes, the header alone, then all of it within a
    second), so this waits for the exit record, the last one wandb writes."""
    deadline = time.monotonic() + timeout
    while "exit_code" not in (run := _parse_run(log)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "exit_code" in run, f"{log} has no exit record after {timeout} s"
    return run


def _parse_run(log: pathlib.Path) -> dict:
    """What the log holds so far."""
    run = {"config": {}, "history": {}}
    for record in _records(log.read_bytes()):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, name=record.run.display_name)
        if kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            config = {u.key: json.loads(u.value_json) for u in updates if u.key[0] != "_"}
            run["config"].update(config)
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            step = run["history"].setdefault(record.history.step.num, {})
            step.update({k: json.loads(v) for k, v in items.items() if k[0] != "_"})
    return run


def jsonl_history(workdir: pathlib.Path) -> dict[int, dict]:
    """metrics.jsonl as wandb should have it: each record's numbers as kind/name, per step."""
    history = {}
    for r in metrics.read_metrics(workdir):
        values = {k: v for k, v in r.items() if k not in ("kind", "step", "time", "elapsed_s")}
        history.setdefault(r["step"], {}).update({f"{r['kind']}/{k}": v for k, v in values.items()})
    return history


def _config(data_dir, **fields):
    fields = dict(max_iters=8, eval_interval=4, ckpt_interval=4, eval_iters=2, log_interval=2)
    c = tiny_config(**fields, wandb_project="minigpt-test")
    c.data.dir = str(data_dir)
    c.sample.max_new_tokens = 0
    return c


def test_a_run_mirrors_its_scalars_and_config_to_an_offline_wandb_run(tiny_data, offline, tmp_path):
    c = _config(tiny_data)
    c.train.wandb_run_name = "tiny"
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, workdir)
    [run] = wandb_runs(workdir)
    assert run["id"] == (workdir / wandb_sink.RUN_ID_FILE).read_text().strip()
    assert run["name"] == "tiny"
    # Every number of metrics.jsonl, under TensorBoard's names, at its step, and nothing else.
    assert run["history"] == jsonl_history(workdir)
    losses = {s: v["train/loss"] for s, v in run["history"].items() if "train/loss" in v}
    val = {s: v["eval/val_loss"] for s, v in run["history"].items() if "eval/val_loss" in v}
    assert list(losses) == [2, 4, 6, 8] and list(val) == [0, 4, 8]
    assert val[8] < val[0] and all(0 < x < 10 for x in losses.values())
    # The config is config.json's: the model's dims with the data's vocab, and the source.
    assert run["config"] == json.loads((workdir / "config.json").read_text())
    model = run["config"]["model"]
    assert (model["n_layer"], model["n_head"], model["n_embd"], model["vocab_size"]) == (
        2,
        2,
        16,
        65,
    )
    assert run["exit_code"] == 0
    assert not list(offline.iterdir())  # nothing in the current directory


def test_a_resume_continues_the_wandb_run_and_a_fresh_start_begins_another(
    tiny_data, offline, tmp_path
):
    c = _config(tiny_data)
    short = copy.deepcopy(c)
    short.train.max_iters = 4
    workdir = tmp_path / "run"
    train.train_and_evaluate(short, workdir)
    train.train_and_evaluate(c, workdir)  # resumes from step 4
    first, second = wandb_runs(workdir)
    assert first["id"] == second["id"] == (workdir / wandb_sink.RUN_ID_FILE).read_text().strip()
    assert (list(first["history"]), list(second["history"])) == ([0, 2, 4], [6, 8])
    assert first["history"] | second["history"] == jsonl_history(workdir)
    assert "eval/val_loss" in second["history"][8]
    c.train.init_from = "scratch"  # with --overwrite: the old run is replaced
    train.train_and_evaluate(c, workdir, overwrite=True)
    third = wandb_runs(workdir)[-1]
    assert third["id"] != first["id"] and list(third["history"]) == [0, 2, 4, 6, 8]
    assert (workdir / wandb_sink.RUN_ID_FILE).read_text().strip() == third["id"]


def test_wandb_mode_beats_the_environment_and_a_failure_marks_the_run(
    offline, tmp_path, monkeypatch
):
    """The writer alone (no training): the config's mode is wandb.init's, over WANDB_MODE; an
    exception out of the writer's block finishes the wandb run as failed."""
    cfg = {"train": {"wandb_project": "p", "wandb_run_name": "", "wandb_mode": "disabled"}}
    (tmp_path / "off").mkdir()
    with metrics.MetricsWriter(tmp_path / "off", total=1, config=cfg) as w:
        w.write("eval", 0, {"train_loss": 1.5})
    # WANDB_MODE is offline (the fixture), the config's disabled won: no wandb file at all.
    assert sorted(p.name for p in (tmp_path / "off").iterdir()) == ["metrics.jsonl", "tb"]
    cfg["train"]["wandb_mode"] = "offline"
    (tmp_path / "on").mkdir()
    monkeypatch.setenv("WANDB_MODE", "disabled")  # and the config's offline wins over it
    with (
        pytest.raises(RuntimeError),
        metrics.MetricsWriter(tmp_path / "on", total=1, config=cfg) as w,
    ):
        w.write("eval", 0, {"train_loss": 1.5, "note": "not a number"})
        raise RuntimeError("the run fails")
    [run] = wandb_runs(tmp_path / "on")
    assert run["history"] == {0: {"eval/train_loss": 1.5}} and run["config"] == cfg
    assert run["exit_code"] == 1


def test_wandb_that_cannot_start_is_one_line_and_the_records_stay(offline, tmp_path, monkeypatch):
    """Online without an API key (HOME without a .netrc, no terminal to ask on): wandb.init's
    error as one UsageError line, raised before metrics.jsonl is rewritten."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO())
    (tmp_path / "run").mkdir()
    (tmp_path / "run/metrics.jsonl").write_text('{"kind": "eval", "step": 0, "val_loss": 2.0}\n')
    cfg = {"train": {"wandb_project": "p", "wandb_run_name": "", "wandb_mode": "online"}}
    with pytest.raises(UsageError, match=r"^wandb: .*API key.*WANDB_MODE=offline$") as e:
        metrics.MetricsWriter(tmp_path / "run", total=1, config=cfg)
    assert "\n" not in str(e.value)
    assert metrics.read_metrics(tmp_path / "run") == [{"kind": "eval", "step": 0, "val_loss": 2.0}]


def test_a_bad_mode_and_a_missing_wandb_are_one_line_before_the_workdir(
    tmp_path, monkeypatch, capsys
):
    c = config.base_config()
    c.train.wandb_mode = "cloud"
    with pytest.raises(UsageError, match="train.wandb_mode must be one of"):
        config.validate(c)
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    workdir = tmp_path / "run"
    args = ["train", "--config", SMOKE, "--workdir", str(workdir)]
    err = one_line_error([*args, "--config.train.wandb_project=p"], capsys)
    assert "train.wandb_project needs wandb: pip install -e '.[wandb]'" in err
    assert not workdir.exists()
    with pytest.raises(UsageError, match=r"needs wandb \(.*\): pip install -e '\.\[wandb\]'"):
        wandb_sink._import_wandb()
