"""Studies: `experiments/studies/NAME.yaml` names arms (an experiment plus overrides, one of
them the control) and seeds; `vmr study NAME` runs them as one sweep and reports.

    description: one paragraph
    control: off            # the name of the control arm
    seeds: [0, 1, 2]        # training seeds (the `seed` key)
    overrides: []           # optional: applied to every arm (before the arm's own)
    arms:
      off: {experiment: iiclvm_synthetic, overrides: [ii_loss.weight=0]}
      ii:  {experiment: iiclvm_synthetic, overrides: []}

A run's overrides are the study's, then the command line's, then the arm's own, so an arm
keeps what defines it. Everything is checked up front, including each arm's config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from lightning_app.config import EXPERIMENTS_DIR, load_config
from lightning_app.errors import ConfigError
from lightning_app.sweep_plan import RunSpec, check_not_reserved

STUDIES_DIR = EXPERIMENTS_DIR / "studies"
KEYS = ("arms", "control", "description", "overrides", "seeds")
ARM_KEYS = ("experiment", "overrides")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so an arm may be called `off`, `no` or `on`."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


@dataclass
class Arm:
    experiment: str
    overrides: list[str]


@dataclass
class Study:
    name: str
    path: Path
    description: str
    control: str
    seeds: list[int]
    overrides: list[str]
    arms: dict[str, Arm]

    def definition(self) -> dict:
        """The study as saved in a study folder's manifest (reports need no YAML)."""
        return {"description": self.description, "control": self.control, "seeds": self.seeds,
                "overrides": self.overrides, "path": str(self.path),
                "arms": {k: {"experiment": a.experiment, "overrides": a.overrides}
                         for k, a in self.arms.items()}}


def study_names(studies_dir: Path | None = None) -> list[str]:
    return sorted(p.stem for p in Path(studies_dir or STUDIES_DIR).glob("*.yaml"))


def load_study(name: str, studies_dir: Path | None = None) -> Study:
    """Read and check the study's YAML (structure only; see check_arms for the configs)."""
    studies_dir = Path(studies_dir or STUDIES_DIR)
    names = study_names(studies_dir)
    if name not in names:
        raise ConfigError(f"unknown study '{name}' (choose from: {', '.join(names) or 'none'}"
                          f" in {studies_dir})")
    path = Path(studies_dir) / f"{name}.yaml"
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(KEYS)}")
    for key in data:
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key '{key}' (valid keys: {', '.join(KEYS)})")
    arms = data.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise ConfigError(f"{path}: 'arms' must be a mapping of arm name -> "
                          "{experiment: NAME, overrides: [key=value, ...]}")
    parsed = {str(arm): _arm(path, str(arm), spec) for arm, spec in arms.items()}
    control = data.get("control")
    if control is None:
        raise ConfigError(f"{path}: missing 'control' (the name of the control arm)")
    if str(control) not in parsed:
        raise ConfigError(f"{path}: control '{control}' is not an arm "
                          f"(arms: {', '.join(parsed)})")
    return Study(name=name, path=path, description=str(data.get("description") or ""),
                 control=str(control), seeds=_seeds(path, data.get("seeds")),
                 overrides=_overrides(path, "overrides", data.get("overrides")), arms=parsed)


def _arm(path: Path, name: str, spec: object) -> Arm:
    where = f"arms.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: '{where}' must be a mapping "
                          "{experiment: NAME, overrides: [...]}")
    for key in spec:
        if key not in ARM_KEYS:
            raise ConfigError(f"{path}: unknown key '{where}.{key}' "
                              f"(valid keys: {', '.join(ARM_KEYS)})")
    experiment = spec.get("experiment")
    if not isinstance(experiment, str) or not experiment:
        raise ConfigError(f"{path}: '{where}' needs 'experiment: NAME'")
    return Arm(experiment, _overrides(path, f"{where}.overrides", spec.get("overrides")))


def _overrides(path: Path, where: str, value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{path}: '{where}' must be a list of key=value strings")
    for item in value:
        if not isinstance(item, str) or "=" not in item or item.startswith("="):
            raise ConfigError(f"{path}: '{where}' entry {item!r} is not a key=value string "
                              "(quote values with brackets or colons)")
        check_not_reserved(item.split("=", 1)[0].strip(), f"{path}: '{where}'")
    return list(value)


def _seeds(path: Path, value: object) -> list[int]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{path}: 'seeds' repeats a seed: {value}")
    return list(value)


def arm_overrides(study: Study, arm: str, extra: list[str]) -> list[str]:
    return [*study.overrides, *extra, *study.arms[arm].overrides]


def check_arms(study: Study, extra: list[str]) -> None:
    """Load every arm's config now: a typo fails before any run starts."""
    for arm, spec in study.arms.items():
        try:
            load_config(spec.experiment, arm_overrides(study, arm, extra))
        except ConfigError as e:
            raise ConfigError(f"{study.path}: arm '{arm}': {e}") from None


def study_runs(study: Study, seeds: list[int], extra: list[str]) -> list[RunSpec]:
    """One run per arm and seed, arms in the file's order; the arm is the W&B job type."""
    runs: list[RunSpec] = []
    ids = {_safe(arm) for arm in study.arms}
    if len(ids) < len(study.arms):
        raise ConfigError(f"{study.path}: arm names must differ in letters, digits and _.=+-")
    for arm, spec in study.arms.items():
        for seed in seeds:
            runs.append(RunSpec(index=len(runs), id=f"{_safe(arm)}-s{seed}",
                                experiment=spec.experiment,
                                overrides=arm_overrides(study, arm, extra), seed=seed,
                                job_type=arm, arm=arm))
    return runs


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name) or "arm"
