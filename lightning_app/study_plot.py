"""report.png of a study: per arm mean ± std of the main metrics, and each arm's difference
to the control with its paired 95 % CI."""

from __future__ import annotations

from pathlib import Path

from datamodules.atomic import atomic_file

_MAIN = ("test/v2m/R@1", "test/v2m/R@10", "test/m2v/R@1", "test/m2v/R@10")


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms, control = report["arms"], report["control"]
    shown = [m for m in _MAIN if any(m in a["metrics"] for a in arms.values())]
    others = [a for a in arms if a != control]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        means, errs = [], []
        for m in shown:
            s = arms[arm]["metrics"].get(m) or {}
            means.append(100 * (s.get("mean") or 0.0))
            errs.append(100 * (s.get("std") or 0.0))
        xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(shown))]
        axes[0].bar(xs, means, width, yerr=errs, capsize=3,
                    label=f"{arm} (n={arms[arm]['n']})")
    axes[0].set_title("mean ± std over seeds")
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=8)
    width = 0.8 / max(1, len(others))
    for i, arm in enumerate(others):
        means, lo, hi = [], [], []
        for m in shown:
            d = arms[arm]["diff_to_control"].get(m) or {}
            mean = 100 * (d.get("mean") or 0.0)
            ci = d.get("ci95")
            means.append(mean)
            lo.append(mean - 100 * ci[0] if ci else 0.0)
            hi.append(100 * ci[1] - mean if ci else 0.0)
        xs = [j + (i - (len(others) - 1) / 2) * width for j in range(len(shown))]
        axes[1].bar(xs, means, width, yerr=[lo, hi], capsize=3, label=arm)
    axes[1].axhline(0.0, color="black", linewidth=0.8)
    axes[1].set_title(f"difference to {control} (95 % CI, paired by seed)")
    axes[1].set_ylabel("percentage points")
    if others:
        axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels([m.removeprefix("test/") for m in shown])
    fig.suptitle(f"study {report['study']}")
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
