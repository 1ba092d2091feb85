"""Small fixed-width tables of retrieval metrics for the terminal."""

from __future__ import annotations

import re

_K = re.compile(r"^R@(\d+)$")


def _columns(names: set[str]) -> list[str]:
    ks = sorted(int(m.group(1)) for n in names if (m := _K.match(n)))
    return [f"R@{k}" for k in ks] + [c for c in ("MdR", "MnR") if c in names]


def metrics_table(metrics: dict[str, float], stage: str, title: str = "") -> str:
    """Rows v2m and m2v; R@K in percent, ranks as numbers."""
    rows = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == stage:
            rows.setdefault(parts[1], {})[parts[2]] = value
    cols = _columns({c for r in rows.values() for c in r})
    lines = [title] if title else []
    lines.append(f"{'':<6}" + "".join(f"{c:>9}" for c in cols))
    for direction in sorted(rows, reverse=True):
        cells = []
        for c in cols:
            v = rows[direction].get(c)
            cells.append(f"{'-':>9}" if v is None else
                         f"{v * 100:>9.2f}" if c.startswith("R@") else f"{v:>9.1f}")
        lines.append(f"{direction:<6}" + "".join(cells))
    return "\n".join(lines)
