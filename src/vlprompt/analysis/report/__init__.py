"""An experiment's report: ``report.md`` and ``index.html`` with seaborn figures (see ``render.py``).

``render`` writes it from ``summary.csv`` and ``stats.csv``; ``tables`` builds the paper table, ``figures``
draws the figures, ``published`` compares with the papers' numbers, ``document`` keeps the markdown and the
HTML of each section side by side.
"""

from vlprompt.analysis.report.render import render, shots_table
from vlprompt.analysis.report.tables import paper_table

__all__ = ["render", "paper_table", "shots_table"]
