"""docs/tpu.md as a user runs it: every `minigpt` command on the page parses with the CLI's own
flags and loads its config, every config field and flag it names exists, its cluster variables
are the code's, and its one-GPU-machine command trains here. (Its two-machine command is what
tests/multihost_test.py runs.)"""

import json
import os
import re
import subprocess
import sys

import tpu_doc

from minigpt_jax import cli, data, files, startup

DOC = tpu_doc.DOC.read_text()
# A model and a run small enough for this CPU, appended to a command of the page.
CPU_SIZE = [
    "--config.model.n_layer=1", "--config.model.n_head=2", "--config.model.n_embd=32",
    "--config.model.block_size=32", "--config.train.batch_size=8", "--config.train.max_iters=2",
    "--config.train.eval_interval=2", "--config.train.eval_iters=2",
    "--config.train.ckpt_interval=2", "--config.sample.max_new_tokens=0",
]  # fmt: skip


def test_every_command_flag_and_field_on_the_page_exists(monkeypatch):
    monkeypatch.chdir(tpu_doc.ROOT)  # the page's config paths are relative to the checkout
    found = tpu_doc.commands(DOC)
    configs = {a[a.index("--config") + 1] for a in found if "--config" in a}
    assert {"configs/tpu.py:char", "configs/tpu.py:gpt2_124m"} <= configs  # the parser saw them
    assert {"prepare", "train"} <= {a[0] for a in found}
    assert tpu_doc.problems(DOC) == []


def test_the_checker_finds_a_misspelt_flag_or_field(monkeypatch):
    monkeypatch.chdir(tpu_doc.ROOT)
    bad = (
        DOC.replace("--config.dist.num_processes=2", "--config.dist.num_procs=2")
        .replace("`--val_fraction`", "`--valid_fraction`")
        .replace("`dist.process_id`", "`dist.proc_id`")
        .replace("--data_dir data/shakespeare_char'", "--datadir data/shakespeare_char'")
    )
    found = tpu_doc.problems(bad)
    assert len(found) == 4, found
    for name in ("num_procs", "--valid_fraction", "dist.proc_id", "datadir"):
        assert any(name in line for line in found), (name, found)


def test_the_cluster_variables_the_page_lists_are_the_codes():
    sentence = re.search(r"environment variables is set\*\*:(.*?)\.", DOC, re.S).group(1)
    assert tuple(re.findall(r"`([A-Z_]+)`", sentence)) == startup.CLUSTER_ENV


def test_the_one_gpu_machine_command_trains_and_without_auto_off_says_why(
    corpus, tmp_path, capsys, monkeypatch
):
    for name in startup.CLUSTER_ENV:  # this machine is no cluster's member
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tpu_doc.ROOT)
    section = tpu_doc.sections(DOC)["7. GPU machines and clusters"]
    [one] = [a for a in tpu_doc.commands(section) if not any("dist.coord" in x for x in a)]
    assert "--config.dist.auto=false" in one  # configs/tpu.py turns dist.auto on, for TPU slices
    data_dir = tmp_path / "data"
    data.prepare(files.read_text(corpus)[:20_000], data_dir, block_size=32)
    here = [*CPU_SIZE, f"--config.data.dir={data_dir}"]
    args = [*tpu_doc.with_flag(one, "--workdir", str(tmp_path / "run")), *here]
    assert cli.main(["minigpt", *args]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run/summary.json").read_text())["finished"]
    # Without the switch, a machine with no cluster stops in one line that names it (a fresh
    # process: jax.distributed must start before anything touches a device).
    without = tpu_doc.with_flag(args, "--workdir", str(tmp_path / "b"))
    without.remove("--config.dist.auto=false")
    env = {k: v for k, v in os.environ.items() if k not in startup.CLUSTER_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "minigpt_jax.cli", *without], capture_output=True, text=True,
        timeout=300, env={**env, "PYTHONPATH": str(tpu_doc.ROOT)},
    )  # fmt: skip
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "JAX found no cluster" in err[-1] and "--config.dist.auto=false" in err[-1]
