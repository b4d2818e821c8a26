"""Distillation from a teacher: CasPL's cascade of frozen boosting prompts, PromptKD's student and its loss.

The reference fixture of PromptKD is checked in ``tests/test_reference_equivalence.py``; here the cascade is checked
against the base method (a zero-length prefix changes nothing) and against a hand-built longer prompt.
"""

import pytest
import torch

from vlprompt.clip import deep_prompts
from vlprompt.clip.backbone import PromptedTextEncoder
from vlprompt.methods import MethodContext, MethodError, get_method

CLASSES = ["red circle", "blue square", "green star"]
DEPTHS = {"depth_vision": 3, "depth_text": 3, "n_ctx_vision": 2, "n_ctx_text": 2, "ctx_init": None}


@pytest.fixture(scope="module")
def ctx(pocket_random_backbone):
    bb = pocket_random_backbone
    return MethodContext(
        backbone=bb,
        encoder=PromptedTextEncoder(bb.model),
        classnames=CLASSES,
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=3,
    )


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build(name, ctx, **overrides):
    cls = get_method(name)
    return cls(cls.make_config(overrides), ctx)


def boosting(method, n_vision: int, n_text: int, seed: int = 5) -> dict:
    """Random boosting prompts of the shapes ``method`` cascades after its own."""
    gen = torch.Generator().manual_seed(seed)
    v, t = method.boost_vision, method.boost_text
    return {
        "boost_vision": torch.randn(v.shape[0], n_vision, v.shape[2], generator=gen) * 0.5,
        "boost_text": torch.randn(t.shape[0], n_text, t.shape[2], generator=gen) * 0.02,
    }


def test_cascade_with_a_zero_length_prefix_is_the_base_method(ctx, images):
    labels = torch.tensor([0, 1, 2, 1])
    base = build("promptsrc", ctx, **DEPTHS)
    casc = build("caspl", ctx, **DEPTHS, boost_n_ctx_vision=0, boost_n_ctx_text=0)
    assert set(casc.trainable_state()) == set(base.trainable_state()) | {"boost_vision", "boost_text"}
    for name, p in base.named_parameters():  # same initialisation, drawn in the same order
        assert torch.equal(p, dict(casc.named_parameters())[name]), name
    assert torch.equal(casc(images), base(images))
    results = []
    for method in (base, casc):
        loss, parts = method.loss(images, labels)
        loss.backward()
        results.append((loss, parts, {n: p.grad.clone() for n, p in method.named_parameters() if p.requires_grad}))
    (loss_b, parts_b, grads_b), (loss_c, parts_c, grads_c) = results
    assert torch.equal(loss_b, loss_c) and parts_b == parts_c
    assert grads_b.keys() == grads_c.keys() and all(torch.equal(grads_b[n], grads_c[n]) for n in grads_b)


def test_cascade_equals_the_longer_prompt_it_builds(ctx, images):
    probe = build("caspl", ctx, **DEPTHS, boost_n_ctx_vision=3, boost_n_ctx_text=1)
    boost = boosting(probe, 3, 1)
    casc = build("caspl_ivlp", ctx, **DEPTHS, boost_n_ctx_vision=3, boost_n_ctx_text=1)
    casc = type(casc)(casc.config, ctx.__class__(**{**ctx.__dict__, "boosting_prompts": boost}))
    # one IVLP whose prompts are the concatenation: 3 + 2 vision tokens, 1 + 2 text tokens in every block
    wide = build("ivlp", ctx, **{**DEPTHS, "n_ctx_vision": 5, "n_ctx_text": 3})
    with torch.no_grad():
        wide.vision_ctx.copy_(torch.cat([boost["boost_vision"], casc.vision_ctx], dim=1))
        wide.prompt_learner.ctx.copy_(torch.cat([boost["boost_text"][0], casc.prompt_learner.ctx]))
        wide.text_deep.copy_(torch.cat([boost["boost_text"][1:], casc.text_deep], dim=1))
    torch.testing.assert_close(casc.image_features(images), wide.image_features(images), rtol=0, atol=1e-6)
    torch.testing.assert_close(casc.text_features(), wide.text_features(), rtol=0, atol=1e-6)
    plain = build("ivlp", ctx, **DEPTHS)  # the same learnable prompts without the prefix differ
    assert not torch.allclose(plain.image_features(images), casc.image_features(images), atol=1e-3)


def test_boosting_prompts_stay_frozen_and_travel_with_the_model(ctx, images):
    probe = build("caspl", ctx, **DEPTHS)
    boost = boosting(probe, 4, 4)
    casc = type(probe)(probe.config, ctx.__class__(**{**ctx.__dict__, "boosting_prompts": boost}))
    assert not any("boost" in n for n, _ in casc.named_parameters())
    loss, _ = casc.loss(images, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    state = casc.trainable_state()
    assert torch.equal(state["boost_vision"], boost["boost_vision"])
    fresh = build("caspl", ctx, **DEPTHS)  # zero prefix until model.pt is loaded
    assert not torch.equal(fresh(images), casc(images))
    fresh.load_trainable_state(state)
    assert torch.equal(fresh(images), casc(images))


def test_cascade_shape_errors_are_one_line(ctx):
    probe = build("caspl", ctx, **DEPTHS)
    wrong = {"boost_vision": torch.zeros(2, 4, probe.boost_vision.shape[2])}
    with pytest.raises(MethodError, match="boosting prompts boost_vision have shape"):
        type(probe)(probe.config, ctx.__class__(**{**ctx.__dict__, "boosting_prompts": wrong}))
    with pytest.raises(deep_prompts.DeepPromptError, match="same depth"):
        deep_prompts.cascade([torch.zeros(1, 8)] * 2, [torch.zeros(2, 8)] * 3)
    with pytest.raises(MethodError, match="no deep prompts"):
        from vlprompt.methods.caspl import cascaded

        cascaded(get_method("coop"))
