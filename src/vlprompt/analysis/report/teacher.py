"""The report's section on the teacher of the distillation methods (``reads_teacher``): how much better than the
student's zero-shot CLIP it is on each dataset (``teacher_margins.json``, written by rule ``check_teacher``, which
stops the workflow before the report when the teacher is not better)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from vlprompt.analysis.report.document import Section
from vlprompt.experiment.distillation import distilling_methods, teacher_block


def teacher_section(summary_csv: Path, cfg: dict) -> Section | None:
    """The section, or None when no method of the experiment reads a teacher."""
    path = Path(summary_csv).with_name("teacher_margins.json")
    if not path.is_file() or not distilling_methods({"methods": cfg.get("methods", [])}):
        return None
    margins = json.loads(path.read_text())
    block = teacher_block(cfg)
    backbone = f"{block['backbone']['model']} ({block['backbone']['pretrained']})"
    s = Section("The teacher", "teacher")
    s.text(
        f"The distillation methods learn from `{block['method']}` prompt-tuned on `{backbone}` with the same few-shot "
        "subsets. Its accuracy (the harmonic mean of base and new under base-to-new, averaged over seeds) against the "
        "student backbone's zero-shot accuracy; the workflow stops before this report when the margin is not positive."
    )
    rows = [
        {"dataset": d, "teacher": m["teacher"], "student zero-shot": m["student_zero_shot"], "margin": m["margin"]}
        for d, m in margins.items()
    ]
    s.table(pd.DataFrame(rows))
    if block["backbone"].get("model") == cfg["backbone"]["model"] and (
        block["backbone"].get("pretrained") == cfg["backbone"]["pretrained"]
    ):
        s.note(
            "the teacher is a stand-in: the student's own backbone, prompt-tuned, not a bigger CLIP; these results "
            "show distillation from a better-adapted model of the same size (docs/distillation.md)"
        )
    return s
