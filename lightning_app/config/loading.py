"""Loading a configuration: `experiments/base.yaml` + `experiments/NAME.yaml` + overrides.

Every YAML layer and every `key=value` override is checked against the schema
(`lightning_app.config.schema`) before merging, so a typo fails with one line that names the
source, the key and the valid keys, instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_app.config.schema import Config
from lightning_app.config.validation import validate
from lightning_app.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"


def experiment_names(experiments_dir: Path = EXPERIMENTS_DIR) -> list[str]:
    return sorted(p.stem for p in experiments_dir.glob("*.yaml") if p.stem != "base")


def load_config(
    name: str, overrides: list[str] | tuple[str, ...] = (), experiments_dir: Path | None = None
) -> Config:
    """Merge base.yaml, NAME.yaml and `key=value` overrides into a validated `Config`."""
    experiments_dir = Path(experiments_dir or EXPERIMENTS_DIR)
    names = experiment_names(experiments_dir)
    if not names:
        raise ConfigError(f"unknown experiment '{name}': no experiments in {experiments_dir}")
    if name not in names:
        raise ConfigError(f"unknown experiment '{name}' (choose from: {', '.join(names)})")
    layers: list[tuple[str, dict]] = []
    base = experiments_dir / "base.yaml"
    if base.exists():
        layers.append((str(base), _read_yaml(base)))
    layers += _experiment_layers(experiments_dir, name, names, chain=())
    layers.append(("command line", _parse_overrides(overrides)))
    layers.append(("experiment name", {"name": name}))
    return _merge_layers(layers)


def _merge_layers(layers: list[tuple[str, dict]]) -> Config:
    """Merge (source, mapping) layers over the schema's defaults, each checked key by key."""
    merged = OmegaConf.structured(Config)
    for source, layer in layers:
        _check_keys(merged, layer, source, prefix="")
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", "") or "?"
            msg = str(e).splitlines()[0]
            raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


EXTENDS = "extends"


def _experiment_layers(experiments_dir: Path, name: str, names: list[str],
                       chain: tuple[str, ...]) -> list[tuple[str, dict]]:
    """NAME.yaml, preceded by the experiment it `extends` (recursively), outermost first.

    An ablation then states only what it changes, e.g. `extends: ssvmr_synthetic` plus
    `model: {ssvmr: {mixing: {enabled: false}}}`.
    """
    path = experiments_dir / f"{name}.yaml"
    layer = dict(_read_yaml(path))
    parent = layer.pop(EXTENDS, None)
    if parent is None:
        return [(str(path), layer)]
    if not isinstance(parent, str) or parent not in names:
        raise ConfigError(
            f"{path}: '{EXTENDS}: {parent}' is not an experiment (choose from: {', '.join(names)})"
        )
    if parent in chain or parent == name:
        cycle = " -> ".join((*chain, name, parent))
        raise ConfigError(f"{path}: '{EXTENDS}' forms a cycle ({cycle})")
    return [*_experiment_layers(experiments_dir, parent, names, (*chain, name)), (str(path), layer)]


def config_from_dict(d: dict, where: str) -> Config:
    """A resolved config saved earlier (config.yaml, a checkpoint) back into a `Config`."""
    return config_with_overrides(d, (), where)


def config_with_overrides(saved: dict, overrides: list[str] | tuple[str, ...],
                          where: str) -> Config:
    """A saved resolved config plus `key=value` overrides, each checked as `load_config` does.

    `vmr eval` rebuilds a run's config from its checkpoint this way, then points it at other
    data or another split; errors in the saved config name `where`.
    """
    return _merge_layers([(where, saved), ("command line", _parse_overrides(overrides))])


def to_dict(cfg: Config) -> dict:
    """The resolved config as plain containers (for YAML, JSON and W&B)."""
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: a nested config as dotted keys."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def _parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"command line: cannot parse overrides ({msg})") from None


def _check_keys(schema: DictConfig, layer: dict, source: str, prefix: str) -> None:
    """Raise on keys the schema lacks; drop empty sections (`data:` with all keys commented)."""
    for key, value in list(layer.items()):
        dotted = f"{prefix}{key}"
        if key not in schema:
            valid = ", ".join(sorted(str(k) for k in schema.keys()))
            where = f"under '{prefix[:-1]}'" if prefix else "at top level"
            raise ConfigError(f"{source}: unknown key '{dotted}' (valid keys {where}: {valid})")
        child = schema._get_node(key)
        if isinstance(child, DictConfig) and child._is_none() is False:
            if value is None:
                del layer[key]
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a mapping, got {value!r}")
            _check_keys(child, value, source, prefix=f"{dotted}.")
