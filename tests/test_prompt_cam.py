"""Prompt-CAM: the kept prompt outputs against a hand-written loop over open_clip's blocks in the reference's own order
(Imageomics/Prompt_CAM ``forward_features``: prompts prepended fresh at every block, dropped after it, the last
block's kept), its logits and loss by hand, its initialisation and preset, and that the shared backbone is left as
it was."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from test_deep_prompts import bb, ctx  # noqa: F401  (the pocket CLIP, random weights; its method context)
from test_reference_equivalence import backbone, close, context, fixture, inputs, load_init, loop_step, trainable  # noqa: F401
from vlprompt.clip import deep_prompts, prompt_outputs
from vlprompt.methods import MethodError, get_method

CLASSES = ["red circle", "blue square", "green star"]


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build(ctx, **overrides):  # noqa: F811
    cls = get_method("prompt_cam")
    return cls(cls.make_config(overrides), ctx)


def hooks(model) -> int:
    mods = [model.visual.ln_pre, model.visual.transformer, *model.visual.transformer.resblocks]
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in mods)


def reference_order(model, images, prompts, through_ln_pre=False):
    """The reference's loop: at block j, [P_j, tokens] -> block -> keep the first C outputs, drop them. P_0 enters
    after ``ln_pre`` (the reference's), or as ln_pre(P_0) (the project's convention; ln_pre is per token)."""
    v, c = model.visual, prompts[0].shape[0]
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = v.ln_pre(torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding)
    kept = None
    for j, block in enumerate(v.transformer.resblocks):
        p = v.ln_pre(prompts[0]) if j == 0 and through_ln_pre else prompts[j]
        x = block(torch.cat([p.expand(len(x), -1, -1), x], 1))
        kept, x = x[:, :c], x[:, c:]
    return v.ln_post(kept)


def test_prompt_outputs_equal_the_reference_order_by_hand(bb, images):  # noqa: F811
    model = bb.model
    width = deep_prompts.vision_width(model)
    prompts = [3 * torch.randn(3, width, generator=torch.Generator().manual_seed(j)) + 1 for j in range(4)]
    with torch.no_grad():
        got = prompt_outputs.encode_prompt_outputs(model, images, prompts, through_ln_pre=False)
        expected = reference_order(model, images, prompts)
        through = prompt_outputs.encode_prompt_outputs(model, images, prompts)
        expected_through = reference_order(model, images, prompts, through_ln_pre=True)
    assert got.shape == (4, 3, width)
    assert torch.allclose(got, expected, atol=1e-5) and torch.allclose(through, expected_through, atol=1e-5)
    assert torch.allclose(got, through, atol=1e-5)  # ln_pre without its own affine map: ln_1(ln_pre(P_0)) = ln_1(P_0)
    other = copy.deepcopy(model)  # an ln_pre with its own affine map (a trained CLIP's) tells them apart
    with torch.no_grad():
        other.visual.ln_pre.weight.copy_(torch.linspace(0.5, 2.0, width))  # per feature: ln_1 does not undo it
        other.visual.ln_pre.bias.copy_(torch.linspace(-1.0, 1.0, width))
        after = prompt_outputs.encode_prompt_outputs(other, images, prompts, through_ln_pre=False)
        before = prompt_outputs.encode_prompt_outputs(other, images, prompts)
        assert torch.allclose(after, reference_order(other, images, prompts), atol=1e-5)
        assert torch.allclose(before, reference_order(other, images, prompts, through_ln_pre=True), atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-3)
    assert hooks(model) == 0  # nothing left on the shared backbone
    with torch.no_grad():  # the pooled features are those of the prompted tower as vision_prompts gives them
        with deep_prompts.vision_prompts(model, prompts), prompt_outputs.kept_prompt_outputs(model, 3) as seen:
            pooled = model.encode_image(images)
        assert torch.equal(pooled, deep_prompts.encode_image(model, images, prompts))
    assert len(seen) == 1 and hooks(model) == 0
    with pytest.raises(deep_prompts.DeepPromptError, match="at least one"):
        with prompt_outputs.kept_prompt_outputs(model, 0):
            pass


def test_logits_and_loss_by_hand(ctx, bb, images):  # noqa: F811
    """logit_c = w · ln_post(o_c) + b, CE over them; with w = e_0 and b = 0.5 the logit is the first coordinate of
    the normalised output plus 0.5."""
    method = build(ctx, prompt_dropout=0.0).eval()
    with torch.no_grad():
        method.head.weight.zero_()
        method.head.weight[0, 0] = 1.0
        method.head.bias.fill_(0.5)
        expected = reference_order(bb.model, images, list(method.vision_ctx.unbind(0)))[..., 0] + 0.5
        assert torch.allclose(method(images), expected, atol=1e-5)
    labels = torch.tensor([0, 1, 2, 0])
    loss, parts = method.loss(images, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(expected, labels).item(), rel=1e-5) and set(parts) == {"ce"}


def test_initialisation_preset_and_gradients(ctx, bb, images):  # noqa: F811
    method = build(ctx).train()
    c = method.config
    assert (c.lr, c.epochs, c.batch_size, c.weight_decay, c.warmup_epochs, c.prompt_dropout) == (
        0.005,
        130,
        16,
        0.001,
        20,
        0.1,
    )
    width = deep_prompts.vision_width(bb.model)
    assert method.vision_ctx.shape == (4, len(CLASSES), width)  # one prompt per class, every block (12 capped at 4)
    bound = math.sqrt(6.0 / (3 * 8 * 8 + width))
    assert method.vision_ctx.abs().max() <= bound and method.vision_ctx.abs().max() > 0.5 * bound
    assert 0.01 < method.head.weight.std() < 0.03 and torch.equal(method.head.bias, torch.zeros(1))
    assert {n for n, p in method.named_parameters() if p.requires_grad} == {"vision_ctx", "head.weight", "head.bias"}
    assert all(not p.requires_grad for p in bb.model.parameters())
    loss, _ = method.loss(images, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert method.vision_ctx.grad.abs().sum() > 0 and method.head.weight.grad.abs().sum() > 0
    assert method.head.bias.grad.abs().item() < 1e-6  # one bias shared by every class's logit: CE cannot see it
    with torch.no_grad():  # dropout acts in training only
        assert not torch.equal(method(images), method(images))
        method.eval()
        assert torch.equal(method(images), method(images))


def test_class_specific_and_needs_prompts(ctx):  # noqa: F811
    method = build(ctx)
    assert not method.supports_new_classes
    method.set_classes(CLASSES)
    with pytest.raises(NotImplementedError, match="not trained on"):
        method.set_classes(CLASSES[::-1])
    with pytest.raises(MethodError, match="depth_vision"):
        build(ctx, depth_vision=0)


def test_runs_end_to_end_base_classes_only_and_resumes_exactly(tmp_path_factory):
    """The image runner trains it and evaluates the base classes; the new classes, which it cannot classify, are
    NaN, as for the other class-specific methods. A run killed after its first epoch and resumed ends as the
    uninterrupted run."""
    from test_deep_prompts import run_and_resume

    metrics = run_and_resume(tmp_path_factory, "prompt_cam", {"epochs": 2, "batch_size": 2, "warmup_epochs": 1})
    assert 0 <= metrics["base_acc"] <= 100 and math.isnan(metrics["new_acc"])
    assert len(metrics["train"]["loss_history"]) == 2
    # its trait maps scored on the pocket world: the test images and the few-shot training images of its classes
    scores = metrics["trait_localisation"]
    assert scores["test"]["images"] == 4 and scores["train"]["images"] == 4  # 2 base classes x 2 images
    for split in ("test", "train"):
        assert 0 <= scores[split]["mass"] <= 1 and 0 < scores[split]["area"] < 1
        assert len(scores[split]["mass_per_head"]) == 4  # the pocket CLIP's heads (128 / 32)


def reference_method(backbone, fix, **overrides):  # noqa: F811
    cls = get_method("prompt_cam")
    config = cls.make_config({"prompt_dropout": 0.0, "warmup_epochs": 0, **overrides})
    method = cls(config, context(backbone, fix))
    load_init(method, fix)
    return method.train()


def test_one_step_equals_the_reference(backbone, inputs, tmp_path):  # noqa: F811
    """Imageomics/Prompt_CAM's own model on the tiny CLIP's image tower (``tests/reference/fixtures/prompt_cam.pt``,
    written by ``tests/reference/regenerate_prompt_cam.py``): class-prompt outputs, logits, loss, gradients and one
    step of its optimiser (SGD at its lr 0.005, momentum 0.9, weight decay 0.001)."""
    fix = fixture("prompt_cam")
    method = reference_method(backbone, fix)
    s, c = fix["settings"], method.config
    assert (c.lr, c.momentum, c.weight_decay, c.optimizer) == (s["lr"], s["momentum"], s["weight_decay"], "sgd")
    images, labels = inputs["images"], fix["labels"]
    close(method.class_outputs(images), fix["class_outputs"], what="class-prompt outputs")
    close(method(images), fix["logits"], what="logits")
    loss, _ = method.loss(images, labels)
    close(loss, fix["loss"], what="loss")
    loss.backward()
    for name, p in trainable(method).items():
        close(p.grad, fix["grads"][name], what=f"gradient of {name}")
        p.grad = None
    loop_step(method, images, labels, tmp_path)
    for name, p in trainable(method).items():
        close(p, fix["after_step"][name], what=f"{name} after one step")
    with torch.no_grad():  # the explanation: each class prompt's last-block attention over the patches
        maps = method.eval().trait_maps(images)
    close(maps.transpose(1, 2), fix["trait_maps_after_step"], what="trait maps")
    assert maps.shape == (len(images), len(fix["classnames"]), 1, 16)
    assert torch.all(maps.sum(-1) < 1)  # a share of the attention: the class token and the prompts have the rest


def test_the_fixture_sees_where_the_first_prompts_enter(backbone, inputs):  # noqa: F811
    """Through ln_pre (the project's other deep prompts) instead of after it, the logits leave the reference's."""
    fix = fixture("prompt_cam")
    method = reference_method(backbone, fix, prompts_through_ln_pre=True)
    with torch.no_grad(), pytest.raises(AssertionError, match="logits"):
        close(method(inputs["images"]), fix["logits"], what="logits")


def test_trait_maps_are_the_last_blocks_attention_by_hand(bb, images):  # noqa: F811
    """The reference's order by hand up to the last block, whose attention weights torch's own multi-head attention
    returns per head: the class prompts' rows over the patch columns."""
    model, v = bb.model, bb.model.visual
    width = deep_prompts.vision_width(model)
    prompts = [torch.randn(3, width, generator=torch.Generator().manual_seed(9 + j)) for j in range(4)]
    with torch.no_grad():
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = v.ln_pre(torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding)
        blocks = v.transformer.resblocks
        for j, block in enumerate(blocks[:-1]):
            x = block(torch.cat([prompts[j].expand(len(x), -1, -1), x], 1))[:, 3:]
        h = blocks[-1].ln_1(torch.cat([prompts[-1].expand(len(x), -1, -1), x], 1))
        _, weights = blocks[-1].attn(h, h, h, need_weights=True, average_attn_weights=False)  # (B, heads, N, N)
        expected = weights[:, :, :3, 4:].transpose(1, 2)  # rows: the prompts; columns: the patches after CLS
        got = prompt_outputs.prompt_attention_maps(model, images, prompts, through_ln_pre=False)
    assert got.shape == (len(images), 3, blocks[-1].attn.num_heads, 16)
    assert torch.allclose(got, expected, atol=1e-6)
    assert hooks(model) == 0
