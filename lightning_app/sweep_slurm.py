"""The SLURM launcher of a sweep: one job array, one task per unfinished run.

The script is lightning_app/launch/slurm_array.sbatch filled in; each array task runs
`vmr sweep-task SWEEP_DIR $SLURM_ARRAY_TASK_ID`, which reads its run from the manifest, so
the script carries no per-run overrides and a resubmission runs only what is unfinished.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from datamodules.atomic import write_text
from lightning_app.config import PROJECT_ROOT
from lightning_app.errors import ConfigError
from lightning_app.sweep_plan import Manifest

TEMPLATE = Path(__file__).resolve().parent / "launch" / "slurm_array.sbatch"


@dataclass
class SlurmOptions:
    nodes: int = 1
    gpus: int = 1  # per node; one task per GPU
    cpus: int = 8  # per task
    time: str = "24:00:00"
    partition: str = ""
    max_parallel: int = 0  # array tasks running at once (0: no limit)


def array_spec(indices: list[int], max_parallel: int = 0) -> str:
    """`0-5`, or `1,3,4` when only some runs are left; `%N` caps the tasks running at once."""
    contiguous = indices == list(range(indices[0], indices[-1] + 1))
    spec = f"{indices[0]}-{indices[-1]}" if contiguous else ",".join(map(str, indices))
    return spec + (f"%{max_parallel}" if max_parallel > 0 else "")


def write_array_script(manifest: Manifest, sweep_dir: Path, opts: SlurmOptions) -> Path:
    """Fill the template for the runs not yet finished; returns the script's path."""
    indices = [r.index for r in manifest.runs if r.status != "done"]
    if not indices:
        raise ConfigError(f"{sweep_dir}: every run is finished, nothing to submit")
    for key in ("nodes", "gpus", "cpus"):
        if getattr(opts, key) < 1:
            raise ConfigError(f"--{key}={getattr(opts, key)} must be a positive integer")
    sweep_dir = Path(sweep_dir).resolve()
    logs = sweep_dir / "slurm"
    fields = {
        "NAME": re.sub(r"[^\w.-]", "_", manifest.name), "ARRAY": array_spec(indices,
                                                                            opts.max_parallel),
        "NODES": str(opts.nodes), "GPUS": str(opts.gpus), "CPUS": str(opts.cpus),
        "TIME": opts.time, "LOGDIR": str(logs), "ROOT": shlex.quote(str(PROJECT_ROOT)),
        "SWEEP": shlex.quote(str(sweep_dir)), "PARTITION": opts.partition,
    }
    text = TEMPLATE.read_text()
    if not opts.partition:
        text = "\n".join(ln for ln in text.splitlines() if "@PARTITION@" not in ln) + "\n"
    for key, value in fields.items():
        text = text.replace(f"@{key}@", value)
    script = logs / f"{manifest.kind}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    write_text(script, text)
    script.chmod(0o755)
    return script


def submit(script: Path) -> str:
    """`sbatch SCRIPT`; returns the job id it reports."""
    if shutil.which("sbatch") is None:
        raise ConfigError("--launcher slurm: no 'sbatch' on PATH (use --dry-run to only "
                          "write the script)")
    out = subprocess.run(["sbatch", str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        msg = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise ConfigError(f"sbatch {script} failed (exit code {out.returncode}): {msg}")
    found = re.search(r"(\d+)", out.stdout)
    return found.group(1) if found else out.stdout.strip()


def launch_slurm(manifest: Manifest, sweep_dir: Path, opts: SlurmOptions,
                 dry_run: bool) -> Path:
    script = write_array_script(manifest, sweep_dir, opts)
    record = {"name": "slurm", "script": str(script), "options": vars(opts)}
    if dry_run:
        print(script.read_text(), end="")
    else:
        record["job_id"] = submit(script)
        for run in manifest.runs:
            if run.status != "done":
                run.status = "submitted"
        print(f"sweep: submitted job array {record['job_id']} ({script})")
    manifest.launcher = record
    manifest.write(sweep_dir)
    return script
