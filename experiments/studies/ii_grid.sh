#!/usr/bin/env bash
# The II grid of issue 11 (registered before running): share {0, 0.3, 1} x training pairs
# {500, 1000, 4000}, II loss off (ii_loss.weight=0) vs on (the experiment's II settings: the
# tuned default weight 10, corr), as one `vmr sweep` per condition (each condition has its own data root; the budget is 192
# optimizer steps of batch 250 everywhere, validation every ~24-32 steps).
# Usage: experiments/studies/ii_grid.sh [SEEDS] [OUT]   (defaults: 0, runs/sweeps/ii_grid)
# SHARES="0.0 0.3" runs only those rows (e.g. to split the grid over two shells).
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${1:-0}
OUT=${2:-runs/sweeps/ii_grid}
VMR=${VMR:-.venv/bin/vmr}
for share in ${SHARES:-0.0 0.3 1.0}; do
  for n in 500 1000 4000; do
    case $n in
      500) epochs=96; every=12 ;;
      1000) epochs=48; every=6 ;;
      4000) epochs=12; every=2 ;;
    esac
    tag="share${share/./}_n${n}"
    dir="$OUT/$tag"
    if [ -f "$dir/manifest.json" ]; then args=(--resume "$dir"); else
      args=(iiclvm_synthetic "ii_loss.weight=0,10" --seeds "$SEEDS" --out "$dir"
            "data.synthetic.share=$share" "data.synthetic.train_pairs=$n"
            "data.root=data/synthetic_yt8m_${tag}" "trainer.max_epochs=$epochs"
            "trainer.check_val_every_n_epoch=$every" "eval.gap_pairs=500"
            "trainer.enable_progress_bar=false")
    fi
    "$VMR" sweep "${args[@]}"
  done
done
