"""What a sweep runs: the grid of overrides x seeds, one run per point, and its manifest.

`key=v1,v2` lists the values of a key; a comma inside brackets, braces, parentheses or
quotes does not separate values (`eval.ks=[1,5,10]` is one value), nor does an escaped one
(`a\\,b`). Every grid point trains in a fixed run root `<sweep>/runs/<run id>/`, so a rerun of
the sweep finds each point's run folder again (finished: skipped; interrupted: resumed).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datamodules.atomic import write_text
from lightning_app.errors import ConfigError

MANIFEST = "manifest.json"
# Keys the sweep sets itself for every run.
RESERVED = ("seed", "run_dir", "resume", "logger.wandb.group", "logger.wandb.job_type")
_OPEN, _CLOSE = "[{(", "]})"
# W&B limits job types to 64 characters.
JOB_TYPE_MAX = 64


def split_values(text: str) -> list[str]:
    """Split `text` at the commas outside brackets and quotes; `\\,` is a literal comma."""
    values, current, depth, quote = [], [], 0, ""
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            current.append(nxt if nxt == "," else ch + nxt)
        elif quote:
            current.append(ch)
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            current.append(ch)
            quote = ch
        elif ch in _OPEN or ch in _CLOSE:
            depth += 1 if ch in _OPEN else -1
            if depth < 0:
                raise ConfigError(f"'{text}': unbalanced '{ch}'")
            current.append(ch)
        elif ch == "," and depth == 0:
            values.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth or quote:
        raise ConfigError(f"'{text}': unclosed {'quote' if quote else 'bracket'}")
    values.append("".join(current))
    return values


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["a=1,2", "b=x"]` -> {"a": ["1", "2"], "b": ["x"]}, in the order given."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"sweep: '{item}' is not of the form key=value[,value...]")
        if key in grid:
            raise ConfigError(f"sweep: key '{key}' is given twice")
        check_not_reserved(key, "sweep")
        values = split_values(text)
        if any(v == "" for v in values):
            raise ConfigError(f"sweep: '{item}' has an empty value")
        grid[key] = values
    return grid


def check_not_reserved(key: str, where: str) -> None:
    if key in RESERVED:
        hint = " (give seeds with --seeds)" if key == "seed" else ""
        raise ConfigError(f"{where}: '{key}' is set by the sweep for every run{hint}")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text}: expected integers separated by commas") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text}: a seed is repeated")
    return seeds


def expand(grid: dict[str, list[str]]) -> list[list[str]]:
    """The cartesian product of the grid as override lists, the last key varying fastest."""
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, combo)]
            for combo in itertools.product(*(grid[k] for k in keys))]


@dataclass
class RunSpec:
    """One training run of a sweep: experiment + overrides + seed in run root runs/<id>."""

    index: int
    id: str
    experiment: str
    overrides: list[str]
    seed: int
    job_type: str
    arm: str | None = None
    status: str = "pending"  # pending | running | done | failed | interrupted
    run_dir: str | None = None  # the train run folder, relative to the sweep folder
    returncode: int | None = None
    error: str | None = None
    # Failed without recording its end (status.json missing or still running): killed.
    killed: bool = False

    def root(self, sweep_dir: Path) -> Path:
        return Path(sweep_dir) / "runs" / self.id

    def train_args(self, sweep_dir: Path, group: str, resume: bool) -> list[str]:
        """`vmr` arguments of this run (absolute run root, so any working directory works)."""
        root = self.root(Path(sweep_dir).resolve())
        return ["train", self.experiment, *self.overrides, f"seed={self.seed}",
                f"run_dir={root}", f"logger.wandb.group={group}",
                f"logger.wandb.job_type={_yaml_string(self.job_type)}",
                *(["resume=last"] if resume else [])]


@dataclass
class Manifest:
    """manifest.json of a sweep folder: what to run and where each run stands."""

    kind: str  # sweep | study
    name: str  # the experiment (sweep) or the study
    created: str  # timestamp; with the name it makes the W&B group
    grid: dict[str, list[str]]
    seeds: list[int]
    command: str  # the command line that reproduces the sweep
    runs: list[RunSpec]
    study: dict | None = None  # the study definition (arms, control, ...)
    launcher: dict = field(default_factory=lambda: {"name": "local"})

    @property
    def group(self) -> str:
        return f"{self.name}-{self.created}"

    def plan(self) -> list[tuple]:
        """What identifies the work: two manifests with the same plan are the same sweep."""
        return [(r.id, r.experiment, r.overrides, r.seed) for r in self.runs]

    def write(self, sweep_dir: Path) -> None:
        text = json.dumps(asdict(self), indent=2)
        write_text(Path(sweep_dir) / MANIFEST, text + "\n")

    @classmethod
    def read(cls, sweep_dir: Path) -> Manifest:
        path = Path(sweep_dir) / MANIFEST
        if not path.is_file():
            raise ConfigError(f"{sweep_dir}: not a sweep folder (no {MANIFEST})")
        try:
            data = json.loads(path.read_text())
            data["runs"] = [RunSpec(**r) for r in data["runs"]]
            return cls(**data)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: corrupt ({str(e).splitlines()[0]})") from None


def sweep_runs(experiment: str, grid: dict[str, list[str]], seeds: list[int]) -> list[RunSpec]:
    """One RunSpec per (grid point, seed); the run id and W&B job type name the point by the
    keys that vary (keys with one value apply to every run alike)."""
    varying = {k for k, values in grid.items() if len(values) > 1}
    runs = []
    for overrides in expand(grid):
        label = ",".join(o for o in overrides if o.split("=", 1)[0] in varying) or "default"
        for seed in seeds:
            i = len(runs)
            runs.append(RunSpec(index=i, id=f"{i:03d}-{slug(label)}-s{seed}",
                                experiment=experiment, overrides=overrides, seed=seed,
                                job_type=label[:JOB_TYPE_MAX]))
    return runs


def slug(text: str, limit: int = 60) -> str:
    """A folder-name-safe version of `text` (override keys shortened to their last part)."""
    short = re.sub(r"[\w.]*\.(\w+=)", r"\1", text)
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", short).strip("_")[:limit] or "run"


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"}


def _yaml_string(text: str) -> str:
    """`text` as a YAML scalar that reads back as this string (quoted unless plain)."""
    if _PLAIN.fullmatch(text) and text.lower().lstrip("_.") not in _YAML_WORDS:
        return text
    return "'" + text.replace("'", "''") + "'"
