"""The domain_adaptation report's table as the UDA papers print it (Office-Home: Ar→Cl … Rw→Pr, then Avg): methods
as rows, one column per (source → target) pair in the config's order, the average over pairs last.

Each pair's cell is the mean target accuracy over seeds ± the half-width of its Student-t interval; Avg is, per
seed, the mean over the pairs, then its mean and interval over seeds (as the paper table's Average). The numbers
are the paper table's (:func:`vlprompt.analysis.report.tables.paper_table` with the pairs as its datasets), only
laid out as the UDA papers lay them out; the statistical tests treat the pairs as the datasets.
"""

from __future__ import annotations

import math

import pandas as pd

from vlprompt.analysis.report import tables
from vlprompt.analysis.report.document import Section


def pair_order(cfg: dict) -> list[str]:
    """The pairs' labels (the ``dataset`` of their rows in summary.csv) in the config's order."""
    from vlprompt.experiment.grid import pair_label

    pairs = (cfg.get("pairs") or []) if cfg.get("protocol") == "domain_adaptation" else []
    return [pair_label(s, t) for s, t in pairs]


def _cell(table: tables.PaperTable, method: str, group: str, column: str) -> str:
    mean = table.mean.get((method, group, column), math.nan)
    if math.isnan(mean):
        return "—"
    low, high = table.low.get((method, group, column)), table.high.get((method, group, column))
    if low is None or high is None or math.isnan(low) or method in table.single:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {(high - low) / 2:.2f}"


def pair_table(summary: pd.DataFrame, pairs: list[str], shots: int, level: float = 0.95) -> pd.DataFrame:
    """Target accuracy per method (rows) and pair (columns, ``pairs`` first, then any other), Avg last."""
    table = tables.paper_table(summary, shots=shots, level=level, datasets=pairs)
    average, *groups = [g for g, _ in table.groups]
    column = tables.NAMES["all_acc"]
    rows = []
    for m in table.methods:
        row = {"Method": m} | {g: _cell(table, m, g, column) for g in groups}
        rows.append(row | {"Avg": _cell(table, m, average, column)})
    return pd.DataFrame(rows)


def section(summary: pd.DataFrame, cfg: dict, level: float) -> Section:
    """The per-pair section: one table per shots setting (the largest first)."""
    s = Section("Per pair, as the UDA papers print it", "pairs")
    s.text(
        "Accuracy in percent on each target's test split after training on the source's labelled images (and, "
        "for the methods that read them, the target's training split without labels); mean ± half-width of the "
        f"{level:.0%} Student-t interval over seeds (no interval for a method that does not depend on the seed). "
        "Avg: per seed the mean over the pairs, then over seeds. The statistical tests below take the pairs as "
        "their datasets.",
        css="legend",
    )
    for k in sorted((int(x) for x in summary.shots.unique()), reverse=True):
        s.subtitle(f"{k} shots per class on the source")
        s.table(pair_table(summary, pair_order(cfg), k, level))
    return s
