#!/usr/bin/env bash
# Fill lightning_app/launch/slurm.sbatch from the environment and print the script's path.
# Called by `make slurm`; NAME NODES GPUS CPUS TIME PARTITION ARGS RESUME SBATCH_DIR.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${NAME:?NAME is required}" "${NODES:=1}" "${GPUS:=8}" "${CPUS:=8}" "${TIME:=24:00:00}"
: "${PARTITION:=}" "${ARGS:=}" "${RESUME:=}" "${SBATCH_DIR:=runs/slurm}"
for v in NODES GPUS CPUS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "make slurm: $v=${!v} must be a positive integer" >&2; exit 2; }
done
[[ $NAME =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "make slurm: NAME=$NAME is not an experiment name" >&2; exit 2; }
mkdir -p "$SBATCH_DIR"
dir=$(cd "$SBATCH_DIR" && pwd)
script="$dir/$NAME-$(date +%Y%m%d-%H%M%S)-$$.sbatch"
quote() { printf '%q' "$1"; }
t=$(<"$here/slurm.sbatch")
t=${t//@NAME@/"$NAME"}
t=${t//@NODES@/"$NODES"}
t=${t//@GPUS@/"$GPUS"}
t=${t//@CPUS@/"$CPUS"}
t=${t//@TIME@/"$TIME"}
t=${t//@LOGDIR@/"$dir"}
t=${t//@ROOT@/"$(quote "$root")"}
t=${t//@RESUME@/"$(quote "$RESUME")"}
t=${t//@ARGS@/"$ARGS"}
if [[ -n $PARTITION ]]; then
    t=${t//@PARTITION@/"$PARTITION"}
else
    t=$(grep -v -- '--partition=@PARTITION@' <<<"$t")
fi
printf '%s\n' "$t" >"$script"
chmod +x "$script"
echo "$script"
