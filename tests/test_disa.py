"""DiSa (no official code): its terms by hand on a toy, the saliency mask, and its exact reductions to PromptSRC
(IVLP's cross-entropy plus PromptSRC's terms) on the tiny OpenAI-layout CLIP of the reference fixtures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from test_reference_equivalence import backbone, basis, context, inputs, trainable  # noqa: F401
from vlprompt.methods import MethodError, get_method
from vlprompt.methods.base import normalize
from vlprompt.methods.disa import disa_terms, kept_by_saliency

FIX = {"classnames": ["car_side", "sea_lion", "water_lily", "ant"], "settings": {"dataset": "OxfordPets"}}
SMALL = {"n_ctx_text": 2, "n_ctx_vision": 2, "depth_text": 2, "depth_vision": 2}


def build(backbone, name: str, **overrides):  # noqa: F811
    cls = get_method(name)
    return cls(cls.make_config({**SMALL, **overrides}), context(backbone, FIX))


def pair(inputs):  # noqa: F811
    """(B, 2, 3, H, W): the training images and a second view of each."""
    return torch.stack([inputs["images"], inputs["views"][0]], dim=1), inputs["labels"]


def test_terms_by_hand_on_a_toy():
    """s = 10, label 0, texts (e0, e1). L_CIR: the masked prompted view e0 against the frozen texts gives
    log(1 + e^{−10}); the masked frozen view e1 against the prompted texts gives log(1 + e^{10}). L_DiR: x̃ = (0.8, 0.6),
    x̂ = e0, prototype e1: the move (−0.2, 0.6) against the direction (−1, 1) has cosine 0.8 / √0.8 = √0.8."""
    texts, labels = basis(0, 1), torch.tensor([0])
    image = torch.tensor([[0.8, 0.6] + [0.0] * (texts.shape[1] - 2)])
    terms = disa_terms(labels, 10.0, basis(0), basis(1), texts, texts, image, basis(0), basis(1, 1))
    assert terms["cir"].item() == pytest.approx(math.log1p(math.exp(-10)) + math.log1p(math.exp(10)), rel=1e-6)
    assert terms["dir"].item() == pytest.approx(1 - math.sqrt(0.8), rel=1e-6)


def test_the_least_salient_patches_are_dropped():
    saliency = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.8, 0.0, 0.3, 0.7]])
    assert kept_by_saliency(saliency, 0.5).tolist() == [[1, 2], [0, 3]]
    assert kept_by_saliency(saliency, 0.25).tolist() == [[1, 2, 3], [0, 2, 3]]
    assert kept_by_saliency(saliency, 0.0) is None


def test_empty_mask_no_cross_or_directional_term_is_promptsrc_exactly(backbone, inputs):  # noqa: F811
    disa = build(backbone, "disa", mask_ratio=0.0, cir_weight=0.0, dir_weight=0.0).train()
    src = build(backbone, "promptsrc").train()
    src.load_trainable_state(disa.trainable_state())
    images, labels = pair(inputs)
    loss, parts = disa.loss(images, labels)
    expected, expected_parts = src.loss(images[:, 0], labels)
    assert torch.equal(loss, expected)
    assert all(parts[k] == v for k, v in expected_parts.items())  # CE (IVLP's) and PromptSRC's three terms
    loss.backward()
    expected.backward()
    for (n, p), q in zip(trainable(disa).items(), trainable(src).values(), strict=True):
        assert torch.equal(p.grad, q.grad), n


def test_empty_mask_cross_term_is_the_plain_second_view_by_hand(backbone, inputs):  # noqa: F811
    disa = build(backbone, "disa", mask_ratio=0.0).train()
    images, labels = pair(inputs)
    with torch.no_grad():
        _, parts = disa.loss(images, labels)
        view2, s = images[:, 1], disa.logit_scale
        masked, frozen = disa.image_features(view2), normalize(disa.frozen.model.encode_image(view2))
        by_hand = F.cross_entropy(s * masked @ disa.teacher_text().T, labels) + F.cross_entropy(
            s * frozen @ disa.text_features().T, labels
        )
    assert parts["cir"] == pytest.approx(by_hand.item(), rel=1e-6)
    masked_run = build(backbone, "disa", mask_ratio=0.5).train()
    masked_run.load_trainable_state(disa.trainable_state())
    with torch.no_grad():
        _, masked_parts = masked_run.loss(images, labels)
    assert masked_parts["cir"] != pytest.approx(parts["cir"], rel=1e-4)  # the mask does act
    assert masked_parts["ce"] == parts["ce"] and masked_parts["dir"] == parts["dir"]  # on the second view only


def test_prototypes_are_running_class_means_of_the_frozen_first_view(backbone, inputs):  # noqa: F811
    disa = build(backbone, "disa").train()
    images, labels = pair(inputs)
    with torch.no_grad():
        disa.loss(images, labels)
        frozen = normalize(disa.frozen.model.encode_image(images[:, 0]))
    for c in range(len(FIX["classnames"])):
        rows = frozen[labels == c]
        if len(rows):
            torch.testing.assert_close(disa.prototypes()[c], normalize(rows.mean(0)))
    with pytest.raises(MethodError):
        build(backbone, "disa", mask_ratio=1.0)


def test_a_run_on_the_pocket_world_trains_and_resumes(tmp_path_factory):
    """Two views through the image runner; a killed run resumes to the same state (prototypes and GPA included)."""
    from test_deep_prompts import run_and_resume

    overrides = {"epochs": 3, "batch_size": 2, "depth_text": 2, "depth_vision": 2}
    full = run_and_resume(tmp_path_factory, "disa", overrides)
    assert full["train"]["steps_per_epoch"] == 2 and "running mean" in full["method_info"]["prototypes"]
