"""OOD detection: the metrics against OpenOOD's code and a hand-computed example, the zero-shot scores (MCM,
NegLabel) against OpenOOD-VLM's postprocessor, the negative-label vocabularies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlprompt.data.negative_labels import VocabularyError, negative_labels
from vlprompt.methods.neglabel import grouped_id_score, mine_negatives
from vlprompt.training.ood_metrics import ood_metrics

FIXTURE = Path(__file__).parent / "reference" / "fixtures" / "ood_metrics.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text())


def test_metrics_hand_computed():
    # ID scores 0.9 0.8 0.4, OOD scores 0.7 0.3 0.1 (higher = ID). Of the 9 (ID, OOD) pairs the ID score is higher
    # in 8 (0.4 < 0.7 is the one loss): AUROC = 8/9. OOD positive with -score: thresholds from the lowest score up;
    # 95 % of OOD detected needs all 3 OOD (the last at 0.7), by which the ID 0.4 is flagged: FPR = 1/3.
    # ID positive: accept 95 % of ID needs all 3 ID (down to 0.4), which accepts OOD 0.7: FPR = 1/3.
    # AUPR-in (trapezoid over sklearn's PR points, ID positive, thresholds 0.9 .. 0.1): recall/precision
    # (0, 1) (1/3, 1) (2/3, 1) (2/3, 2/3) (1, 3/4) (1, 3/5) (1, 1/2)  -> area 2/3 + (1/3)(2/3 + 3/4)/2 = 0.9028.
    # AUPR-out, OOD positive, scores -s: (0,1) (1/3,1) (2/3,1) (2/3,2/3) (1,3/4) ... -> the same 0.9028.
    m = ood_metrics([0.9, 0.8, 0.4], [0.7, 0.3, 0.1])
    assert m["auroc"] == pytest.approx(100 * 8 / 9)
    assert m["fpr95"] == pytest.approx(100 / 3)
    assert m["fpr95_id"] == pytest.approx(100 / 3)
    area = 2 / 3 + (1 / 3) * (2 / 3 + 3 / 4) / 2
    assert m["aupr_in"] == pytest.approx(100 * area)
    assert m["aupr_out"] == pytest.approx(100 * area)


def test_metrics_perfect_and_inverted():
    perfect = ood_metrics([3.0, 2.0], [1.0, 0.0])
    assert perfect["auroc"] == 100 and perfect["fpr95"] == 0 and perfect["fpr95_id"] == 0
    inverted = ood_metrics([0.0, 1.0], [2.0, 3.0])
    assert inverted["auroc"] == 0 and inverted["fpr95"] == 100


def test_metrics_match_openood(reference):
    for case in reference["metrics"]:
        m = ood_metrics(case["id"], case["ood"])
        for key in ("fpr95", "auroc", "aupr_in", "aupr_out"):
            assert m[key] == pytest.approx(100 * case[key], abs=1e-9), key


def test_metrics_refuse_empty_and_nan():
    with pytest.raises(ValueError, match="need ID and OOD"):
        ood_metrics([], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics([float("nan")], [0.1])


def test_grouped_score_matches_openood_vlm(reference):
    ref = reference["neglabel_score"]
    img = torch.tensor(ref["image_features"])
    text = torch.tensor(ref["text_features"])
    logits = ref["logit_scale"] * img @ text.T
    n_id = ref["n_id"]
    score = grouped_id_score(logits[:, :n_id], logits[:, n_id:], ref["groups"])
    torch.testing.assert_close(score, torch.tensor(ref["score"]), rtol=1e-5, atol=1e-6)
    assert logits[:, :n_id].argmax(-1).tolist() == ref["pred"]
    # the grouping matters at this tolerance: one group (the plain softmax mass) misses the reference
    one = grouped_id_score(logits[:, :n_id], logits[:, n_id:], 1)
    assert (one - torch.tensor(ref["score"])).abs().max() > 1e-4


def test_grouped_score_one_group_is_the_id_softmax_mass():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    expected = (np.exp(2) + 1) / (np.exp(2) + 1 + np.exp(1) + np.exp(-1))
    assert grouped_id_score(logits[:, :2], logits[:, 2:], 1).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="groups"):
        grouped_id_score(logits[:, :2], logits[:, 2:], 3)


def test_mining_keeps_the_farthest_candidates():
    id_text = torch.eye(3)[:2]  # two ID labels along x and y
    cands = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0], [0, 0, 1.0], [0.5, 0.5, 0.7]]), dim=-1)
    assert mine_negatives(id_text, cands, 1, 0.05).tolist() == [1]  # orthogonal to both
    assert mine_negatives(id_text, cands, 2, 0.05).tolist() == [1, 2]


def test_pocket_vocabulary_has_no_id_word():
    ids = ["blue circle", "blue square", "red circle"]
    words = negative_labels("pocket:words", ids)
    assert "blue" not in words and "circle" not in words and "square" not in words
    assert "green" in words and "star" in words and "striped pattern" in words
    comps = negative_labels("pocket:compositions", ids)
    assert "red square" in comps and "red circle" not in comps and "blue circle" not in comps


def test_vocabulary_file_and_errors(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("# WordNet nouns\ncat\n\ndog  # a comment\nCat\nblue circle\n")
    assert negative_labels(f"file:{f}", ["blue circle"]) == ["cat", "dog", "Cat"]
    with pytest.raises(VocabularyError, match="does not exist"):
        negative_labels(f"file:{tmp_path / 'none.txt'}", ["a"])
    with pytest.raises(VocabularyError, match="unknown negative-label vocabulary"):
        negative_labels("wordnet", ["a"])


# ---- LAPT: the mixing, the loss and the score against OpenOOD-VLM's trainer and postprocessor ------------------


def test_wccm_mixing_matches_openood_vlm(reference):
    from vlprompt.methods.lapt import wccm_mix

    ref = reference["lapt"]
    img, text = torch.tensor(ref["image_features"]), torch.tensor(ref["text_features"])
    labels, which = torch.tensor(ref["labels"]), torch.tensor(ref["which"])
    mixed = wccm_mix(img, text, labels, ref["lam"], which)
    torch.testing.assert_close(mixed, torch.tensor(ref["mixed"]), rtol=1e-5, atol=1e-6)
    assert ref["targets_unchanged"]  # within-class mixing keeps the one-hot targets
    # each term matters: without the text partner, or with another prompt of the class, it misses
    assert not torch.allclose(wccm_mix(img, text, labels, 1.0, which), torch.tensor(ref["mixed"]), atol=1e-3)
    assert not torch.allclose(wccm_mix(img, text, labels, ref["lam"], (which + 1) % 3), mixed, atol=1e-3)


def test_lapt_loss_matches_openood_soft_cross_entropy(reference):
    from vlprompt.methods.lapt import soft_cross_entropy

    ref = reference["lapt"]
    logits = torch.tensor(ref["logits"])
    targets = torch.nn.functional.one_hot(torch.tensor(ref["labels"]), logits.shape[1]).float()
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(ref["multice"], rel=1e-6)


def test_lapt_trains_on_rendered_images_and_scores_with_its_negatives(pocket_random_backbone):
    from vlprompt.clip.backbone import PromptedTextEncoder
    from vlprompt.methods import MethodContext, MethodError, get_method

    ctx = MethodContext(
        backbone=pocket_random_backbone,
        encoder=PromptedTextEncoder(pocket_random_backbone.model),
        classnames=["blue circle", "blue square", "red circle", "red square"],
        template="a dark photo of a {}.",
        device=torch.device("cpu"),
        seed=1,
        dataset="pocket_dark",
    )
    cls = get_method("lapt")
    method = cls(cls.make_config({"synth_per_label": 2, "epochs": 1, "batch_size": 16}), ctx)
    assert method.n_id == 4 and "green" in method.negative_names and "striped pattern" not in method.negative_names
    before = {k: v.clone() for k, v in method.trainable_state().items()}
    assert method.fit(ctx)
    assert any(not torch.equal(before[k], v) for k, v in method.trainable_state().items())
    assert method.run_info()["synthesised_images"] == 2 * (4 + len(method.negative_names))
    x = torch.randn(3, pocket_random_backbone.embed_dim)
    logits = method.all_logits(x)
    assert method(x).shape == (3, 4)
    torch.testing.assert_close(method.ood_score(x), grouped_id_score(logits[:, :4], logits[:, 4:], 1))
    real = MethodContext(**{**ctx.__dict__, "dataset": "DTD"})
    with pytest.raises(MethodError, match="not a pocket dataset"):
        method.synthesise(real)
