"""The typed errors and the optional-extra check."""

import sys

import pytest

import minigpt_jax
from minigpt_jax import cli, errors


def test_require_torch_gives_torch_ref_or_says_how_to_install(monkeypatch):
    pytest.importorskip("torch")
    assert errors.require_torch().__name__ == "minigpt_jax.torch_ref"
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, "minigpt_jax.torch_ref", raising=False)
    monkeypatch.delattr(minigpt_jax, "torch_ref", raising=False)
    with pytest.raises(errors.UsageError, match=r"pip install -e '\.\[torch\]'"):
        errors.require_torch()


@pytest.mark.parametrize(
    "error, code", [(errors.UsageError("bad\ninput"), 2), (errors.RunStopped("nan"), 1)]
)
def test_the_cli_maps_each_error_to_its_exit_code_and_one_line(error, code, capsys, monkeypatch):
    def fail(flags, argv):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "report", (fail, None))
    assert cli.main(["minigpt", "report", "x"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(error).split()[0] in err
