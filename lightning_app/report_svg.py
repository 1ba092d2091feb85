"""The charts of report.html as inline SVG text: recall@K curves and a histogram of ranks.

Plain string templates (no plotting library, nothing external), so the page stays one
self-contained file. Every label written here is a number or a fixed word; callers escape
anything that comes from data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

COLORS = {"v2m": "#1f6fb4", "m2v": "#d0502a"}
LABELS = {"v2m": "video → music", "m2v": "music → video"}
_FONT = 'font-family="sans-serif" font-size="11"'


def recall_curve(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """R@1..R@max_k as fractions: the share of ranks <= k."""
    r = np.asarray(ranks, dtype=np.int64).reshape(-1)
    hist = np.bincount(np.minimum(r, max_k + 1), minlength=max_k + 2)
    return np.cumsum(hist[1:max_k + 1]) / r.size


def _decade_ticks(max_k: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to max_k (always including max_k)."""
    ticks, base = [], 1
    while base <= max_k:
        ticks += [t for t in (base, 2 * base, 5 * base) if t <= max_k]
        base *= 10
    return ticks if ticks[-1] == max_k else [*ticks, max_k]


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{title}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        *body, "</svg>"])


def _y_axis(left: float, top: float, plot_h: float, plot_w: float, label: str) -> list[str]:
    out = []
    for pct in range(0, 101, 20):
        y = top + plot_h * (1 - pct / 100)
        out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{left + plot_w:.1f}" y2="{y:.1f}" '
                   'stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>'
                   f'{pct}</text>')
    out.append(f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" {_FONT} '
               f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{label}</text>')
    return out


def _legend(directions: Sequence[str], x: float, y: float) -> list[str]:
    """One row above the plot, so it never covers a curve or a bar."""
    out = []
    for i, d in enumerate(directions):
        xx = x + 120 * i
        out.append(f'<rect x="{xx:.1f}" y="{y - 8:.1f}" width="12" height="10" '
                   f'fill="{COLORS.get(d, "#555")}"/>')
        out.append(f'<text x="{xx + 17:.1f}" y="{y + 1:.1f}" {_FONT}>{LABELS.get(d, d)}</text>')
    return out


def recall_curves_svg(ranks: dict[str, np.ndarray], max_k: int, width: int = 560,
                      height: int = 320) -> str:
    """Recall@K for K = 1..max_k (log axis), one line per direction."""
    left, top, right, bottom = 52, 30, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    span = math.log10(max_k) if max_k > 1 else 1.0

    def x_of(k: float) -> float:
        return left + plot_w * (math.log10(k) / span if max_k > 1 else 0.5)

    body = _y_axis(left, top, plot_h, plot_w, "Recall@K (%)")
    for k in _decade_ticks(max_k):
        x = x_of(k)
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
                    'stroke="#efefef"/>')
        body.append(f'<text x="{x:.1f}" y="{top + plot_h + 15}" text-anchor="middle" {_FONT}>'
                    f'{k}</text>')
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                f'{_FONT}>K</text>')
    for d, r in ranks.items():
        curve = recall_curve(r, max_k)
        points = " ".join(f"{x_of(k):.1f},{top + plot_h * (1 - v):.1f}"
                          for k, v in enumerate(curve, start=1))
        body.append(f'<polyline class="curve" data-direction="{d}" fill="none" '
                    f'stroke="{COLORS.get(d, "#555")}" stroke-width="2" points="{points}"/>')
    body.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
                'stroke="#888"/>')
    body += _legend(list(ranks), left, 14)
    return _frame(width, height, "Recall at K", body)


def rank_bins(max_rank: int) -> list[tuple[int, int]]:
    """(low, high) inclusive rank bins 1, 2, 3-5, 6-10, 11-20, 21-50, ... covering max_rank."""
    bins, low, base = [], 1, 1
    while low <= max(1, max_rank):
        for step in (1, 2, 5):
            high = step * base
            if high >= low:
                bins.append((low, high))
                low = high + 1
            if low > max(1, max_rank):
                break
        base *= 10
    return bins


def _bin_label(low: int, high: int) -> str:
    def short(n: int) -> str:
        return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)

    return short(low) if low == high else f"{short(low)}–{short(high)}"


def rank_histogram_svg(ranks: dict[str, np.ndarray], width: int = 560,
                       height: int = 320) -> str:
    """Share of queries (%) whose correct item lands in each rank bin, bars per direction."""
    left, top, right, bottom = 52, 30, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    max_rank = int(max(int(np.max(r)) for r in ranks.values()))
    bins = rank_bins(max_rank)
    shares = {d: [float(((np.asarray(r) >= lo) & (np.asarray(r) <= hi)).mean()) for lo, hi in bins]
              for d, r in ranks.items()}
    body = _y_axis(left, top, plot_h, plot_w, "queries (%)")
    slot = plot_w / len(bins)
    bar = slot * 0.8 / max(1, len(ranks))
    for b, (lo, hi) in enumerate(bins):
        x0 = left + slot * b + slot * 0.1
        for i, (d, values) in enumerate(shares.items()):
            h = plot_h * values[b]
            body.append(f'<rect class="bar" data-direction="{d}" data-bin="{lo}-{hi}" '
                        f'x="{x0 + i * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                        f'height="{h:.1f}" fill="{COLORS.get(d, "#555")}">'
                        f'<title>{LABELS.get(d, d)}, rank {_bin_label(lo, hi)}: '
                        f'{values[b] * 100:.1f} %</title></rect>')
        body.append(f'<text x="{left + slot * (b + 0.5):.1f}" y="{top + plot_h + 15}" '
                    f'text-anchor="middle" {_FONT}>{_bin_label(lo, hi)}</text>')
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                f'{_FONT}>rank of the correct item</text>')
    body.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
                'stroke="#888"/>')
    body += _legend(list(ranks), left, 14)
    return _frame(width, height, "Histogram of ranks", body)
