"""`vmr extract-slurm` / `make extract-slurm`: a feature extraction as a SLURM job array.

The script is lightning_app/launch/slurm_array.sbatch (the sweep launcher's template) with
its SBATCH header kept (array, resources, requeue on preemption) and its command replaced:
array task K runs `vmr extract ARGS --shard K/N`. A requeued or resubmitted task skips the
files it already wrote, so resubmitting the same script finishes an interrupted job. When
every task has finished, `vmr extract-merge OUT` combines the shard reports.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import time
from pathlib import Path

from datamodules.atomic import write_text
from lightning_app.config import PROJECT_ROOT
from lightning_app.errors import ConfigError
from lightning_app.sweep_slurm import TEMPLATE, array_spec


@dataclasses.dataclass
class ExtractSlurmOptions:
    shards: int = 8
    gpus: int = 1  # per array task; 0 for CPU-only features (vmnet, logmel)
    cpus: int = 8  # per array task: decoding workers
    time: str = "24:00:00"
    partition: str = ""
    max_parallel: int = 0  # array tasks running at once (0: no limit)


def _header() -> list[str]:
    """The template's SBATCH and setup lines, without its comment and its sweep command.

    Its early SIGUSR1 is left out too: it lets Lightning checkpoint a run before the time
    limit, while an extraction has nothing to save (each file is written when done).
    """
    lines = TEMPLATE.read_text().splitlines()
    body = [ln for ln in lines[1:] if not ln.startswith("# ") and "--signal=" not in ln]
    end = next(i for i, ln in enumerate(body) if ln.startswith("srun "))
    return [lines[0], *body[:end]]


def write_extract_script(extract_args: list[str], out: Path, opts: ExtractSlurmOptions) -> Path:
    """Fill the template for `vmr extract EXTRACT_ARGS`, one array task per shard."""
    if opts.shards < 1:
        raise ConfigError(f"--shards={opts.shards} must be a positive integer")
    for key in ("cpus", "gpus"):
        if getattr(opts, key) < (1 if key == "cpus" else 0):
            raise ConfigError(f"--{key}={getattr(opts, key)} must be "
                              f"{'positive' if key == 'cpus' else '>= 0'}")
    if any(a == "--shard" or a.startswith("--shard=") for a in extract_args):
        raise ConfigError("vmr extract-slurm: leave --shard out of the extract arguments "
                          "(each array task gets its own)")
    out = Path(out).resolve()
    logs = out / "slurm"
    fields = {"NAME": "extract-" + re.sub(r"[^\w.-]", "_", extract_args[0]),
              "ARRAY": array_spec(list(range(opts.shards)), opts.max_parallel),
              "NODES": "1", "GPUS": str(max(opts.gpus, 1)), "CPUS": str(opts.cpus),
              # The task starts where the command was given, so relative paths in the
              # extract arguments mean what they meant there.
              "TIME": opts.time, "LOGDIR": str(logs), "ROOT": shlex.quote(str(Path.cwd())),
              "PARTITION": opts.partition}
    lines = [ln for ln in _header()
             if (opts.partition or "@PARTITION@" not in ln)
             and (opts.gpus or "--gres=" not in ln)]
    text = "\n".join(lines)
    for key, value in fields.items():
        text = text.replace(f"@{key}@", value)
    vmr = str(PROJECT_ROOT / ".venv" / "bin" / "vmr")
    command = " ".join(shlex.quote(a) for a in [vmr, "extract", *extract_args])
    text = (f"{text.rstrip()}\n\n# vmr extract, shard $SLURM_ARRAY_TASK_ID of {opts.shards}; "
            f"afterwards: vmr extract-merge {shlex.quote(str(out))}\n"
            f"srun --kill-on-bad-exit=1 {command} \\\n"
            f"    --shard \"${{SLURM_ARRAY_TASK_ID}}/{opts.shards}\"\n")
    script = logs / f"extract-{extract_args[0]}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    write_text(script, text)
    script.chmod(0o755)
    return script
