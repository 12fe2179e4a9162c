"""Each command has its own flags, and `--help` lists them."""

import pytest

from minigpt_jax import cli, cli_flags

OWN = {
    "prepare": ("--input", "--val_fraction"),
    "train": ("--config", "--overwrite", "--cpu_devices"),
    "eval": ("--step", "--data_dir"),
    "sample": ("--prompt", "--top_p", "--window", "--out"),
    "bench sample": ("--lengths", "--repeats"),
    "bench train": ("--steps", "--vs"),
    "report": ("--out",),
    "convert": ("--from", "--to", "--meta", "--n_head"),
    "compare": ("--out_dir", "--sample_tokens", "--torch_threads"),
}


def test_every_command_has_a_flag_set():
    assert sorted(cli_flags.DEFINE) == sorted(OWN) == sorted(cli.COMMANDS)


FOREIGN = {  # flags of other commands that must not leak into this one
    "train": ("--prompt", "--meta", "--lengths", "--step"),
    "sample": ("--config", "--meta", "--steps"),
    "eval": ("--config", "--prompt", "--overwrite"),
    "report": ("--workdir", "--config"),
}


@pytest.mark.parametrize("command", sorted(OWN))
def test_help_lists_the_commands_own_flags_and_exits_0(command, capsys):
    assert cli.main(["minigpt", *command.split(), "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: minigpt {command} ")
    listed = {line.split(":")[0].strip().replace("[no]", "") for line in out.splitlines()[2:]
              if line.startswith("  --")}  # fmt: skip
    defined = {f"--{name}" for name in cli_flags.define(command, ["minigpt"])}
    assert listed == defined and set(OWN[command]) <= listed
    assert not listed & set(FOREIGN.get(command, ()))


def test_a_flag_of_another_command_is_refused(capsys):
    assert cli.main(["minigpt", "eval", "--workdir", "w", "--prompt", "x"]) == 2
    assert "prompt" in capsys.readouterr().err
