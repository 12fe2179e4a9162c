"""minigpt_jax.sweep_spec: arms from --grid and sweep files, typed and checked before any run."""

import pytest

from minigpt_jax import config, sweep_spec
from minigpt_jax.errors import UsageError


def _base():
    c = config.base_config()
    config.smoke(c)
    return c


def test_grid_is_the_product_of_typed_values_in_order():
    arms = sweep_spec.grid_arms(_base(), ["model.activation=gelu,relu", "opt.lr=1e-3,3e-3"])
    assert [a["name"] for a in arms] == [
        "activation=gelu,lr=0.001", "activation=gelu,lr=0.003",
        "activation=relu,lr=0.001", "activation=relu,lr=0.003",
    ]  # fmt: skip
    assert arms[3]["overrides"] == {"model.activation": "relu", "opt.lr": 0.003}


@pytest.mark.parametrize(
    "field, text, value",
    [
        ("model.n_layer", "3", 3),
        ("opt.lr", "1e-3", 0.001),
        ("opt.lr", "1", 1.0),  # an int where a float goes is that float
        ("model.bias", "true", True),
        ("model.tie_embeddings", "0", False),
        ("model.attn_dropout", "0.1", 0.1),  # a placeholder field: typed by its declaration
        ("model.attn_dropout", "none", None),
        ("model.activation", "relu", "relu"),
    ],
)
def test_grid_values_take_the_fields_type(field, text, value):
    got = sweep_spec.typed(_base(), field, text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "grid, message",
    [
        (["model.nope=1,2"], "no such config field 'model.nope'"),
        (["nope=1"], "no such config field 'nope'"),
        (["model=1"], "no such config field 'model'"),
        (["model.n_layer=2,x"], "model.n_layer='x' is not of the field's type, int"),
        (["model.bias=maybe"], "is not of the field's type, bool"),
        (["model.n_layer="], "write field=value1,value2"),
        (["model.n_layer"], "write field=value1,value2"),
        (["model.n_layer=1", "model.n_layer=2"], "names model.n_layer twice"),
        (["train.seed=1,2"], "seeds come from --seeds"),
    ],
)
def test_bad_grids_are_one_usage_error(grid, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(".", r"\.")):
        sweep_spec.grid_arms(_base(), grid)


def test_names_use_the_full_field_when_two_share_a_last_name():
    name = sweep_spec.arm_name({"model.dropout": 0.1, "train.dropout": 0.2, "opt.lr": 0.5})
    assert name == "model.dropout=0.1,train.dropout=0.2,lr=0.5"
    assert sweep_spec.arm_name({"data.dir": "a/b c"}) == "dir=a_b_c"  # a folder name
    assert sweep_spec.arm_name({}) == "base"


def test_sweep_file_arms_are_named_and_typed(tmp_path):
    path = tmp_path / "sweep.py"
    path.write_text(
        "def get_sweep():\n"
        "    return [{'name': 'base'}, {'model.activation': 'relu'},\n"
        "            {'name': 'small', 'model.n_layer': 1, 'opt.lr': 1}]\n"
    )
    arms = sweep_spec.file_arms(_base(), str(path))
    assert arms == [
        {"name": "base", "overrides": {}},
        {"name": "activation=relu", "overrides": {"model.activation": "relu"}},
        {"name": "small", "overrides": {"model.n_layer": 1, "opt.lr": 1.0}},
    ]


@pytest.mark.parametrize(
    "body, message",
    [
        ("x = 1\n", "AttributeError"),
        ("def get_sweep():\n    return {'a': 1}\n", "must return a list of dicts"),
        ("def get_sweep():\n    return [{'model.n_layer': 'two'}]\n", "type, int"),
        ("def get_sweep():\n    return [{'name': 'a/b'}]\n", "arm name 'a/b'"),
        ("def get_sweep(:\n", "SyntaxError"),
    ],
)
def test_bad_sweep_files_are_one_usage_error(tmp_path, body, message):
    path = tmp_path / "sweep.py"
    path.write_text(body)
    with pytest.raises(UsageError, match=message) as e:
        sweep_spec.file_arms(_base(), str(path))
    assert "\n" not in str(e.value)


def test_every_arm_is_validated_and_named_once():
    c = _base()
    bad = [{"name": "a", "overrides": {}}, {"name": "b", "overrides": {"opt.lr": -1.0}}]
    with pytest.raises(UsageError, match=r"sweep arm b: opt\.lr must be >= 0"):
        sweep_spec.check_arms(c, bad, [0])
    twice = [{"name": "a", "overrides": {}}, {"name": "a", "overrides": {"opt.lr": 0.1}}]
    with pytest.raises(UsageError, match="arm name.* a used twice"):
        sweep_spec.check_arms(c, twice, [0])
    with pytest.raises(UsageError, match="no arms"):
        sweep_spec.check_arms(c, [], [0])


def test_a_run_config_is_the_base_with_the_arm_and_the_seed():
    c = _base()
    arm = {"name": "relu", "overrides": {"model.activation": "relu", "opt.lr": 0.5}}
    run = sweep_spec.run_config(c, arm, seed=7)
    assert (run.model.activation, run.opt.lr, run.train.seed) == ("relu", 0.5, 7)
    assert (c.model.activation, c.train.seed) == ("gelu", 1337)  # the base is left alone


@pytest.mark.parametrize(
    "text, seeds", [("3", [0, 1, 2]), ("0,5,7", [0, 5, 7]), ("1", [0]), ("4,", [4])]
)
def test_seeds_are_a_count_or_a_list(text, seeds):
    assert sweep_spec.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["x", "1,1", "-1,2", "2.5"])
def test_bad_seeds_are_one_usage_error(text):
    with pytest.raises(UsageError, match="--seeds"):
        sweep_spec.parse_seeds(text)


def test_the_source_of_a_sweep_is_its_config_and_overrides():
    argv = ["sweep", "--config", "c.py:cpu", "--root", "r", "--config.opt.lr=0.1", "--grid", "x"]
    assert sweep_spec.source(argv) == {"config": "c.py:cpu", "overrides": ["--config.opt.lr=0.1"]}
    assert sweep_spec.source(["--config=c.py"])["config"] == "c.py"
    assert sweep_spec.source([]) == {"config": None, "overrides": []}
