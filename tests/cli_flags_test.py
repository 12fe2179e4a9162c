"""Each command has its own flags, and `--help` lists them."""

import pytest

from minigpt_jax import cli, cli_flags, config_file
from minigpt_jax.errors import UsageError

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
    "sweep": ("--config", "--root", "--grid", "--sweep", "--seeds", "--parallel", "--baseline"),
    "sweep report": ("--baseline", "--metric", "--out"),
    "plan": ("--config", "--device", "--chips", "--mfu", "--measure"),
}


def test_every_command_has_a_flag_set():
    assert sorted(cli_flags.DEFINE) == sorted(OWN) == sorted(cli.COMMANDS)


FOREIGN = {  # flags of other commands that must not leak into this one
    "train": ("--prompt", "--meta", "--lengths", "--step"),
    "sample": ("--config", "--meta", "--steps"),
    "eval": ("--config", "--prompt", "--overwrite"),
    "report": ("--workdir", "--config"),
    "sweep report": ("--grid", "--config", "--seeds"),
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


CONFIG_FILES = {  # a config file wrong in each way a hand-written one can be -> its one line
    "syntax.py": (b"def get_config(arg:\n", "SyntaxError at line 1: '(' was never closed"),
    "nul.py": (b"x = 1\x00\n", "null bytes"),
    "body.py": (b"import no_such_module_anywhere\n", "loading it raised ModuleNotFoundError"),
    "raises.py": (
        b"def get_config(arg=''):\n    raise KeyError(arg)\n",
        "get_config('x') raised KeyError: 'x'",
    ),
    "dict.py": (
        b"def get_config(arg=''):\n    return {'model': {}}\n",
        "get_config('x') returned a dict, not a ConfigDict",
    ),
    "partial.py": (
        b"from ml_collections import ConfigDict\n"
        b"def get_config(arg=''):\n    return ConfigDict({'model': {'n_layer': 2}})\n",
        "lacks the field(s) data, dist, mesh, model.activation and ",
    ),
    "noget.py": (b"x = 1\n", "noget.py has no get_config(arg) function"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_a_bad_config_file_is_one_line_when_read_and_at_an_override(name, tmp_path, capsys):
    payload, message = CONFIG_FILES[name]
    (tmp_path / name).write_bytes(payload)
    args = ["minigpt train", "--config", f"{tmp_path / name}:x"]
    FLAGS = cli_flags.define("train", args)
    FLAGS(args)  # refused when read: a command checks its own needs first (compare: torch)
    with pytest.raises(UsageError) as info:
        cli._config(FLAGS)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    code = cli.main(
        ["minigpt", "train", "--config", f"{tmp_path / name}:x", "--config.train.seed=1"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err


def test_each_config_file_loads_afresh(tmp_path):
    """A file without get_config is refused even after another file loaded in the process."""
    (tmp_path / "good.py").write_text(
        "from minigpt_jax import config\ndef get_config(arg=''):\n    return config.base_config()\n"
    )
    (tmp_path / "noget.py").write_text("x = 1\n")
    config = config_file.load_config_file(str(tmp_path / "good.py"))
    assert config.model.n_layer == 6 and config.is_locked
    with pytest.raises(UsageError, match="noget.py has no get_config"):
        config_file.load_config_file(str(tmp_path / "noget.py"))
