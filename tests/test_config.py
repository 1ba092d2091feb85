"""Config loading: base.yaml + NAME.yaml + overrides, merged and validated into dataclasses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lightning_app.config import (
    EXPERIMENTS_DIR,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    SynthConfig,
    WandbConfig,
    experiment_names,
    load_config,
    to_dict,
    to_yaml,
)
from lightning_app.errors import ConfigError


def _keys(cls) -> str:
    return ", ".join(sorted(f.name for f in dataclasses.fields(cls)))


def _choices(cls, name: str) -> str:
    return ", ".join(next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"])


def _error(name: str, overrides=(), experiments_dir: Path | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(name, list(overrides), experiments_dir=experiments_dir)
    return str(e.value)


@pytest.fixture
def exp_dir(tmp_path: Path) -> Path:
    """A private experiments folder: base.yaml and one experiment, `toy`."""
    d = tmp_path / "experiments"
    d.mkdir()
    (d / "base.yaml").write_text(
        "seed: 3\ndata:\n  batch_size: 10\n  num_workers: 1\noptim:\n  lr: 0.1\n"
        "logger:\n  wandb:\n    project: from-base\n"
    )
    (d / "toy.yaml").write_text("# A toy experiment.\ndata:\n  batch_size: 20\noptim:\n  lr: 0.2\n")
    return d


# ----------------------------------------------------------------------------- merging


def test_quickstart_resolves_values_from_base_and_experiment_yaml():
    base = yaml.safe_load((EXPERIMENTS_DIR / "base.yaml").read_text())
    quick = yaml.safe_load((EXPERIMENTS_DIR / "quickstart.yaml").read_text())
    cfg = load_config("quickstart")
    assert isinstance(cfg, Config)
    assert cfg.name == "quickstart"
    assert cfg.data.batch_size == quick["data"]["batch_size"]
    assert cfg.data.root == quick["data"]["root"]
    assert cfg.data.synthetic.enabled is quick["data"]["synthetic"]["enabled"]
    assert cfg.trainer.max_epochs == quick["trainer"]["max_epochs"]
    assert cfg.eval.chunk_size == base["eval"]["chunk_size"]
    assert cfg.logger.wandb.project == base["logger"]["wandb"]["project"]


def test_overrides_are_typed_by_the_schema():
    cfg = load_config("quickstart", ["optim.lr=0.01", "trainer.devices=2", "data.synthetic.seed=7",
                                     "eval.ks=[1,2]", "trainer.limit_train_batches=10"])
    assert cfg.optim.lr == 0.01 and type(cfg.optim.lr) is float
    assert cfg.trainer.devices == 2 and type(cfg.trainer.devices) is int
    assert cfg.data.synthetic.seed == 7
    assert cfg.eval.ks == [1, 2]
    # An int is a number of batches for Lightning: it must not become 10.0.
    assert cfg.trainer.limit_train_batches == 10 and type(cfg.trainer.limit_train_batches) is int
    fraction = load_config("quickstart", ["trainer.limit_train_batches=0.25"])
    assert fraction.trainer.limit_train_batches == 0.25
    assert load_config("quickstart", ["optim.lr=1"]).optim.lr == 1.0
    assert load_config("quickstart", ["trainer.devices=[0,1]"]).trainer.devices == [0, 1]
    assert load_config("quickstart", ["logger.wandb.entity=me"]).logger.wandb.entity == "me"
    assert load_config("quickstart").trainer.devices == "auto"


def test_layers_take_precedence_defaults_base_experiment_command_line(exp_dir):
    cfg = load_config("toy", experiments_dir=exp_dir)
    assert (cfg.seed, cfg.data.num_workers, cfg.data.batch_size, cfg.optim.lr) == (3, 1, 20, 0.2)
    assert cfg.logger.wandb.project == "from-base"
    assert cfg.data.eval_batch_size == DataConfig().eval_batch_size  # schema default
    cfg = load_config("toy", ["optim.lr=0.3", "seed=5"], experiments_dir=exp_dir)
    assert (cfg.seed, cfg.data.batch_size, cfg.optim.lr) == (5, 20, 0.3)


def test_base_yaml_is_optional_and_an_empty_experiment_means_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    cfg = load_config("empty", experiments_dir=tmp_path)
    assert to_dict(cfg) == {**to_dict(Config()), "name": "empty"}


def test_an_empty_section_in_yaml_is_ignored(exp_dir):
    (exp_dir / "toy.yaml").write_text("data:\n  # batch_size: 5\noptim:\n  lr: 0.2\n")
    cfg = load_config("toy", experiments_dir=exp_dir)
    assert (cfg.data.batch_size, cfg.optim.lr) == (10, 0.2)


def test_to_yaml_round_trips():
    cfg = load_config("quickstart", ["optim.lr=0.01"])
    assert yaml.safe_load(to_yaml(cfg)) == to_dict(cfg)
    assert to_dict(cfg)["optim"]["lr"] == 0.01


def _assert_leaves_match(raw: dict, resolved: dict, path: str) -> None:
    for key, value in raw.items():
        assert key in resolved, f"{path}{key} missing from the resolved config"
        got = resolved[key]
        if isinstance(value, dict):
            _assert_leaves_match(value, got, f"{path}{key}.")
        elif isinstance(got, float) and isinstance(value, (int, str)):
            assert got == float(value), f"{path}{key}: {got!r} != {value!r}"
        else:
            assert got == value, f"{path}{key}: {got!r} != {value!r}"


@pytest.mark.parametrize("name", experiment_names())
def test_every_repo_experiment_loads_and_keeps_its_values(name):
    cfg = load_config(name)
    assert cfg.name == name
    resolved = to_dict(cfg)
    raw = yaml.safe_load((EXPERIMENTS_DIR / f"{name}.yaml").read_text()) or {}
    raw.pop("name", None)
    parent = raw.pop("extends", None)
    if parent is not None:
        # An ablation differs from its parent exactly where it says it does.
        assert parent in experiment_names()
        assert to_dict(load_config(parent)) != {**resolved, "name": parent}
    _assert_leaves_match(raw, resolved, "")


def test_experiment_names_lists_yaml_stems_without_base(exp_dir):
    (exp_dir / "another.yaml").write_text("")
    (exp_dir / "notes.txt").write_text("not an experiment")
    assert experiment_names(exp_dir) == ["another", "toy"]
    assert "base" not in experiment_names()
    assert experiment_names() == sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")
                                        if p.stem != "base")


# ----------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_on_command_line():
    assert _error("quickstart", ["bogus=1"]) == (
        f"command line: unknown key 'bogus' (valid keys at top level: {_keys(Config)})"
    )


def test_unknown_nested_key_on_command_line():
    assert _error("quickstart", ["data.bogus=1"]) == (
        f"command line: unknown key 'data.bogus' (valid keys under 'data': {_keys(DataConfig)})"
    )
    assert _error("quickstart", ["data.synthetic.bogus=1"]) == (
        "command line: unknown key 'data.synthetic.bogus' "
        f"(valid keys under 'data.synthetic': {_keys(SynthConfig)})"
    )


def test_unknown_key_in_experiment_yaml_names_the_file(exp_dir):
    path = exp_dir / "toy.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    assert _error("toy", experiments_dir=exp_dir) == (
        f"{path}: unknown key 'optim.lrr' (valid keys under 'optim': {_keys(OptimConfig)})"
    )


def test_unknown_key_in_base_yaml_names_the_file(exp_dir):
    base = exp_dir / "base.yaml"
    base.write_text("sede: 1\n")
    assert _error("toy", experiments_dir=exp_dir) == (
        f"{base}: unknown key 'sede' (valid keys at top level: {_keys(Config)})"
    )


def test_a_section_given_a_scalar_is_refused():
    assert _error("quickstart", ["data=3"]) == "command line: 'data' must be a mapping, got 3"


# ----------------------------------------------------------------------------- types and values


def test_wrong_type_names_the_key():
    msg = _error("quickstart", ["data.batch_size=abc"])
    assert msg.startswith("command line: bad value for 'data.batch_size': ")
    assert "'abc'" in msg
    msg = _error("quickstart", ["optim.lr=fast"])
    assert msg.startswith("command line: bad value for 'optim.lr': ")
    assert _error("quickstart", ["data.synthetic.enabled=maybe"]).startswith(
        "command line: bad value for 'data.synthetic.enabled': "
    )


def test_wrong_type_in_yaml_names_the_file_and_key(exp_dir):
    path = exp_dir / "toy.yaml"
    path.write_text("data:\n  batch_size: lots\n")
    msg = _error("toy", experiments_dir=exp_dir)
    assert msg.startswith(f"{path}: bad value for 'data.batch_size': ")


@pytest.mark.parametrize(
    ("override", "key", "cls", "field"),
    [
        ("model.name=foo", "model.name", ModelConfig, "name"),
        ("data.dataset=foo", "data.dataset", DataConfig, "dataset"),
        ("optim.name=foo", "optim.name", OptimConfig, "name"),
        ("logger.wandb.mode=foo", "logger.wandb.mode", WandbConfig, "mode"),
    ],
)
def test_unknown_choice_lists_the_valid_choices(override, key, cls, field):
    assert _error("quickstart", [override]) == (
        f"config: '{key}' has unknown value 'foo' (choose from: {_choices(cls, field)})"
    )


def test_choices_are_the_registered_ones():
    from lightning_app.registry import DATAMODULES, MODELS

    assert _choices(ModelConfig, "name") == ", ".join(MODELS)
    assert _choices(DataConfig, "dataset") == ", ".join(DATAMODULES)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "config: 'data.batch_size' must be > 0 (got 0)"),
        ("data.eval_batch_size=-5", "config: 'data.eval_batch_size' must be > 0 (got -5)"),
        ("data.num_workers=-1", "config: 'data.num_workers' must be >= 0 (got -1)"),
        ("data.val_size=0", "config: 'data.val_size' must be >= 1 (got 0)"),
        ("data.test_size=-1", "config: 'data.test_size' must be >= 1 (got -1)"),
        ("data.synthetic.noise=1.0", "config: 'data.synthetic.noise' must be in [0, 1) (got 1.0)"),
        ("data.synthetic.missing=-0.1",
         "config: 'data.synthetic.missing' must be in [0, 1) (got -0.1)"),
        ("data.synthetic.span=0", "config: 'data.synthetic.span' must be in (0, 1] (got 0.0)"),
        ("data.synthetic.feature_noise=-1",
         "config: 'data.synthetic.feature_noise' must be >= 0 (got -1.0)"),
        ("data.synthetic.frames=0", "config: 'data.synthetic.frames' must be >= 1 (got 0)"),
        ("optim.lr=0", "config: 'optim.lr' must be > 0 (got 0.0)"),
        ("loss.structure_k=1", "config: 'loss.structure_k' must be >= 2 (got 1)"),
        ("eval.ks=[0,5]", "config: 'eval.ks' must be a non-empty list of k >= 1 (got [0, 5])"),
        ("eval.ks=[]", "config: 'eval.ks' must be a non-empty list of k >= 1 (got [])"),
        ("trainer.max_epochs=0", "config: 'trainer.max_epochs' must be > 0 (got 0)"),
        ("trainer.num_nodes=0", "config: 'trainer.num_nodes' must be >= 1 (got 0)"),
        ("trainer.limit_train_batches=1.5",
         "config: 'trainer.limit_train_batches' must be empty, a number of batches (int >= 0) "
         "or a fraction in [0.0, 1.0] (got 1.5)"),
        ("checkpoint.save_top_k=-2", "config: 'checkpoint.save_top_k' must be >= -1 (got -2)"),
    ],
)
def test_range_checks(override, message):
    assert _error("quickstart", [override]) == message


def test_synthetic_pairs_must_leave_training_pairs():
    msg = _error("quickstart", ["data.synthetic.pairs=100", "data.synthetic.val=50",
                                "data.synthetic.test=50"])
    assert msg == ("config: 'data.synthetic.pairs' must be > data.synthetic.val + "
                   "data.synthetic.test = 100 (got 100)")
    cfg = load_config("quickstart", ["data.synthetic.pairs=101", "data.synthetic.val=50",
                                     "data.synthetic.test=50"])
    assert cfg.data.synthetic.pairs == 101


# ----------------------------------------------------------------------------- names and files


def test_unknown_experiment_lists_the_valid_names():
    names = ", ".join(experiment_names())
    assert _error("nope") == f"unknown experiment 'nope' (choose from: {names})"
    assert _error("base").startswith("unknown experiment 'base' (choose from: ")


def test_unknown_experiment_in_an_empty_folder(tmp_path):
    assert _error("toy", experiments_dir=tmp_path) == (
        f"unknown experiment 'toy': no experiments in {tmp_path}"
    )


@pytest.mark.parametrize("item", ["optim.lr", "=3", "data.batch_size 3"])
def test_malformed_override(item):
    assert _error("quickstart", [item]) == f"override '{item}' is not of the form key=value"


def test_experiment_yaml_that_is_not_a_mapping(exp_dir):
    path = exp_dir / "toy.yaml"
    path.write_text("- optim.lr=0.1\n- seed=2\n")
    assert _error("toy", experiments_dir=exp_dir) == (
        f"{path}: expected a mapping of config keys, got list"
    )


def test_invalid_yaml_names_the_file(exp_dir):
    path = exp_dir / "toy.yaml"
    path.write_text("data: [unclosed\n")
    msg = _error("toy", experiments_dir=exp_dir)
    assert msg.startswith(f"{path}: not valid YAML (")
    assert "\n" not in msg


def test_invalid_base_yaml_names_the_file(exp_dir):
    base = exp_dir / "base.yaml"
    base.write_text("seed: [1\n")
    assert _error("toy", experiments_dir=exp_dir).startswith(f"{base}: not valid YAML (")


def _write_experiments(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text("seed: 1\n")
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def test_extends_layers_parent_then_child_then_overrides(tmp_path):
    folder = _write_experiments(
        tmp_path / "exp",
        parent="data:\n  batch_size: 64\noptim:\n  lr: 0.5\n",
        child="extends: parent\noptim:\n  lr: 0.25\n",
        grandchild="extends: child\ndata:\n  eval_batch_size: 7\n",
    )
    cfg = load_config("grandchild", ["seed=9"], experiments_dir=folder)
    assert (cfg.data.batch_size, cfg.optim.lr, cfg.data.eval_batch_size, cfg.seed) == (
        64, 0.25, 7, 9)
    assert cfg.name == "grandchild"


def test_extends_unknown_or_cyclic_is_one_line_error(tmp_path):
    folder = _write_experiments(tmp_path / "exp", a="extends: b\n", b="extends: a\n",
                                c="extends: nope\n")
    with pytest.raises(ConfigError, match=r"'extends' forms a cycle \(a -> b -> a\)"):
        load_config("a", experiments_dir=folder)
    with pytest.raises(ConfigError, match=r"c\.yaml: 'extends: nope' is not an experiment"):
        load_config("c", experiments_dir=folder)
