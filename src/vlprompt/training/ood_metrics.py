"""The metrics every OOD-detection paper reports, on one in-distribution and one OOD score vector.

Scores are confidences: higher means "more in-distribution". The definitions are OpenOOD's
(``openood/evaluators/metrics.py``, ``auc_and_fpr_recall``, in Jingkang50/OpenOOD v1.5 and in YBZh/OpenOOD-VLM
804f331, read, not copied), computed with scikit-learn's curves as OpenOOD computes them, so the numbers can sit
beside the OpenOOD tables (``tests/test_ood.py`` checks them against a fixture written by OpenOOD's own function
and against a hand-computed example):

- ``auroc``: area under the ROC curve with OOD as the positive class and ``-score`` as its score (the same number
  as with ID positive and ``score``).
- ``fpr95``: OpenOOD's FPR@95: OOD positive, the false-positive rate (ID images flagged as OOD) at the first ROC
  point where the true-positive rate (OOD images flagged) reaches 95 %. The MCM and NegLabel papers define it
  the other way round (OOD images accepted when 95 % of ID images are accepted); that number is
  ``fpr95_id`` here, so either paper's table can be compared.
- ``aupr_in`` / ``aupr_out``: area under the precision-recall curve, trapezoidal (``sklearn.metrics.auc`` over
  ``precision_recall_curve``, as OpenOOD; not ``average_precision_score``'s step sum), ID positive with
  ``score`` / OOD positive with ``-score``.

All in percent, as the papers print them.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

OOD_METRICS = ("fpr95", "auroc", "aupr_in", "aupr_out", "fpr95_id")  # in OpenOOD's column order, then the MCM FPR
RECALL = 0.95


def _first_at(rates: np.ndarray, other: np.ndarray, level: float) -> float:
    return float(other[int(np.argmax(rates >= level))])


def ood_metrics(id_scores, ood_scores, recall: float = RECALL) -> dict[str, float]:
    """``{fpr95, auroc, aupr_in, aupr_out, fpr95_id}`` in percent for ID and OOD confidences (higher = ID)."""
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise ValueError(f"OOD metrics need ID and OOD scores; got {len(id_scores)} ID and {len(ood_scores)} OOD")
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise ValueError("OOD scores contain NaN or infinity: the method's score is undefined on some image")
    conf = np.concatenate([id_scores, ood_scores])
    is_ood = np.concatenate([np.zeros(len(id_scores), int), np.ones(len(ood_scores), int)])
    fpr, tpr, _ = skm.roc_curve(is_ood, -conf)
    p_in, r_in, _ = skm.precision_recall_curve(1 - is_ood, conf)
    p_out, r_out, _ = skm.precision_recall_curve(is_ood, -conf)
    fpr_id, tpr_id, _ = skm.roc_curve(1 - is_ood, conf)  # ID positive: OOD accepted at 95 % of ID accepted
    out = {
        "fpr95": _first_at(tpr, fpr, recall),
        "auroc": float(skm.auc(fpr, tpr)),
        "aupr_in": float(skm.auc(r_in, p_in)),
        "aupr_out": float(skm.auc(r_out, p_out)),
        "fpr95_id": _first_at(tpr_id, fpr_id, recall),
    }
    return {k: 100.0 * v for k, v in out.items()}
