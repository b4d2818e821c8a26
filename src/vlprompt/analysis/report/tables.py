"""The report's paper table: methods as rows, datasets as column groups, the Average group first.

Every cell holds the mean over seeds, its Student-t interval and the number of independent runs; the HTML
shows the mean (the best of each column in bold) with the interval's half-width on a smaller line and the
interval in a tooltip, the markdown ``mean ± half-width``. A table wider than ``MAX_COLUMNS`` value columns
is split into several tables of whole groups, so that no table is wider than the page.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vlprompt.analysis import stats

NAMES = {"base_acc": "Base", "new_acc": "New", "hm": "HM", "hm_mean": "HM (mean)", "all_acc": "Accuracy"}
NAMES.update({"auroc": "AUROC", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out"})  # protocol ood
MAX_COLUMNS = 16  # value columns per HTML table: about 60 px each on a page of 1150 px


@dataclass
class PaperTable:
    """Mean, interval and runs per method (row) and (group, column); ``groups`` keeps the column order."""

    methods: list[str]
    groups: list[tuple[str, list[str]]]
    mean: dict = field(default_factory=dict)  # (method, group, column) -> float
    low: dict = field(default_factory=dict)
    high: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    level: float = 0.95
    single: set = field(default_factory=set)  # methods that do not depend on the seed

    def columns(self) -> list[tuple[str, str]]:
        return [(g, c) for g, cols in self.groups for c in cols]

    def frame(self) -> pd.DataFrame:
        """The means as a DataFrame (methods × (group, column)), for tests and tools."""
        data = {(g, c): [self.mean.get((m, g, c), math.nan) for m in self.methods] for g, c in self.columns()}
        return pd.DataFrame(data, index=pd.Index(self.methods, name="method"))

    def best(self) -> set[tuple[str, str, str]]:
        """(method, group, column) of the best mean of each column at two decimals (ties all count)."""
        out = set()
        for g, c in self.columns():
            values = {
                m: round(self.mean[(m, g, c)], 2)
                for m in self.methods
                if not math.isnan(self.mean.get((m, g, c), math.nan))
            }
            if values:
                top = max(values.values())
                out |= {(m, g, c) for m, v in values.items() if v == top}
        return out


def _dataset_order(summary: pd.DataFrame, order: list[str] | None) -> list[str]:
    present = list(summary.dataset.unique())
    first = [d for d in order or [] if d in present]
    return first + sorted(d for d in present if d not in first)


def _put(table: PaperTable, method: str, group: str, column: str, values, single: bool) -> None:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if single:
        values = values[:1]
    if len(values) == 0:
        return
    key = (method, group, column)
    table.mean[key] = float(values.mean())
    table.low[key], table.high[key] = stats.t_interval(values, table.level)
    table.runs[key] = len(values)


def paper_table(
    summary: pd.DataFrame,
    shots=None,
    level: float = 0.95,
    datasets: list[str] | None = None,
    methods: list[str] | None = None,
) -> PaperTable:
    """The papers' table. Base-to-new at one shots setting (default: the largest): groups Average (Base, New,
    HM of the averaged Base and New, and HM (mean), the mean of per-dataset HMs) and one per dataset (Base, New,
    HM). Other protocols: one column per shots setting in each group (all of them unless ``shots`` is given).
    ``datasets`` gives the column order (the config's), ``methods`` the row order (default: the report's)."""
    from vlprompt.analysis.report.figures import method_order

    b2n = stats.primary_metric(summary) == "hm"
    all_shots = sorted(summary.shots.unique())
    shots_list = [shots if shots is not None else all_shots[-1]] if b2n or shots is not None else all_shots
    single = stats.single_run_methods(summary)
    rows = methods or method_order(summary.method)
    table = PaperTable(methods=rows, groups=[], level=level, single=single)
    if b2n:
        metrics = [("base_acc", "base_acc"), ("new_acc", "new_acc"), ("hm", "hm")]
        avg_metrics = [*metrics, ("hm_mean", "hm_mean")]
        labels = lambda k, m: NAMES[m]  # noqa: E731
    else:
        metrics = avg_metrics = [("all_acc", "all_acc")]
        labels = (lambda k, m: f"{k} shots") if len(shots_list) > 1 else (lambda k, m: NAMES[m])  # noqa: E731
    targets = stats.targets_only(summary)
    sources = set(summary.dataset) - set(targets.dataset)  # transfer protocols: the training dataset
    ordered = sorted(sources) + [d for d in _dataset_order(summary, datasets) if d not in sources]
    average = "Average (targets)" if sources else "Average"
    table.groups.append((average, [labels(k, m) for k in shots_list for m, _ in avg_metrics]))
    table.groups += [
        (f"{d} (source)" if d in sources else d, [labels(k, m) for k in shots_list for m, _ in metrics])
        for d in ordered
    ]
    for k in shots_list:
        for m, column in avg_metrics:
            per_seed = stats.seed_averages(targets[targets.shots == k], column)
            for method, g in per_seed.groupby("method"):
                _put(table, method, average, labels(k, m), g[column], method in single)
        for (method, dataset), g in summary[summary.shots == k].groupby(["method", "dataset"]):
            group = f"{dataset} (source)" if dataset in sources else dataset
            for m, column in metrics:
                _put(table, method, group, labels(k, m), g[column], method in single)
    return table


def _chunks(groups: list[tuple[str, list[str]]], limit: int | None = None) -> list[list[tuple[str, list[str]]]]:
    """Whole groups per table, at most ``limit`` (``MAX_COLUMNS``) value columns each (a larger group gets a
    table of its own)."""
    limit = limit or MAX_COLUMNS
    chunks: list[list[tuple[str, list[str]]]] = []
    current: list[tuple[str, list[str]]] = []
    width = 0
    for g in groups:
        if current and width + len(g[1]) > limit:
            chunks.append(current)
            current, width = [], 0
        current.append(g)
        width += len(g[1])
    return chunks + [current] if current else chunks


def _tooltip(table: PaperTable, key) -> str:
    runs = table.runs[key]
    if runs == 1:
        return "one run: the method does not depend on the seed" if key[0] in table.single else "one run"
    return f"mean of {runs} runs; {table.level:.0%} t-interval [{table.low[key]:.2f}, {table.high[key]:.2f}]"


def _cell_text(table: PaperTable, key) -> tuple[str, str] | None:
    """(mean, half-width of the interval, "" without one) at two decimals; None for an empty cell."""
    if key not in table.mean:
        return None
    half = "" if math.isnan(table.low[key]) else f"{(table.high[key] - table.low[key]) / 2:.2f}"
    return f"{table.mean[key]:.2f}", half


def to_html(table: PaperTable, families: dict[str, str] | None = None) -> str:
    """The table as HTML: grouped header, best value per column in bold, the interval's half-width below the
    mean (blank for a single run), the interval in the cell's tooltip; a family's first row has a rule above."""
    best = table.best()
    families = families or {}
    out = []
    for chunk in _chunks(table.groups):
        flat = all(len(cols) == 1 for _, cols in chunk)
        head = (
            "<tr><th rowspan='1' class='method'>Method</th>"
            if flat
            else "<tr><th rowspan='2' class='method'>Method</th>"
        )
        head += "".join(f"<th colspan='{len(cols)}' class='group'>{html.escape(g)}</th>" for g, cols in chunk)
        head += "</tr>"
        if not flat:
            head += "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for _, cols in chunk for c in cols) + "</tr>"
        body, previous = [], None
        for m in table.methods:
            family = families.get(m, "")
            css = " class='family-start'" if previous is not None and family != previous else ""
            previous = family
            cells = [f"<td class='method' title='{html.escape(family)}'>{html.escape(m)}</td>"]
            for g, cols in chunk:
                for c in cols:
                    key = (m, g, c)
                    text = _cell_text(table, key)
                    if text is None:
                        cells.append("<td class='na'>—</td>")
                        continue
                    value = f"<strong>{text[0]}</strong>" if key in best else text[0]
                    half = f"±{text[1]}" if text[1] else ""
                    cells.append(f"<td title='{html.escape(_tooltip(table, key))}'>{value}<small>{half}</small></td>")
            body.append(f"<tr{css}>" + "".join(cells) + "</tr>")
        out.append(
            f"<div class='scroll'><table class='table paper'><thead>{head}</thead><tbody>{''.join(body)}"
            "</tbody></table></div>"
        )
    return "\n".join(out)


def to_markdown(table: PaperTable) -> str:
    """The same table in markdown: one column per (group, column), ``**best**``, ``mean ± half-width``."""
    best = table.best()
    out = []
    for chunk in _chunks(table.groups):
        cols = [(g, c) for g, cs in chunk for c in cs]
        header = ["Method"] + [
            g if len(cs) == 1 and c == NAMES["all_acc"] else f"{g} {c}" for g, cs in chunk for c in cs
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * len(cols)) + "|"]
        for m in table.methods:
            row = [m]
            for g, c in cols:
                text = _cell_text(table, (m, g, c))
                if text is None:
                    row.append("—")
                    continue
                value = f"**{text[0]}**" if (m, g, c) in best else text[0]
                row.append(f"{value} ± {text[1]}" if text[1] else value)
            lines.append("| " + " | ".join(row) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"
