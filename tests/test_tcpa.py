"""TCPA: the pools' selection, mask and loss against the reference's own ``Pool_TCPA`` (zhoujiahuan1991/ICML2025-TCPA,
``tests/reference/fixtures/tcpa_pool.pt``, written by ``tests/reference/regenerate_tcpa.py`` at its hard-coded
ViT-B/16 shapes); the prompted attention (``vlprompt.clip.attention_mask``) against a hand-written loop over
open_clip's blocks in the reference's layout; the loss on a toy; the random-epoch clock; the reduction to the fixed
prompts without pools; the mixup against the reference's own get_mixup_fn (``tcpa_mixup.pt``) and a run with it
deterministic."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from test_deep_prompts import bb, ctx  # noqa: F401  (the pocket CLIP, random weights; its method context)
from vlprompt.clip import attention_mask, deep_prompts
from vlprompt.methods import get_method
from vlprompt.methods.tcpa import PromptPool, mixup_batch, mixup_draw, tcpa_mask

FIXTURE = Path(__file__).parent / "reference" / "fixtures" / "tcpa_pool.pt"
MIXUP_FIXTURE = Path(__file__).parent / "reference" / "fixtures" / "tcpa_mixup.pt"
CLASSES = ["red circle", "blue square", "green star"]


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build(ctx, name="tcpa", **overrides):  # noqa: F811
    cls = get_method(name)
    return cls(cls.make_config(overrides), ctx)


def hooks(model) -> int:
    blocks = model.visual.transformer.resblocks
    return sum(len(b._forward_pre_hooks) + len(b._forward_hooks) + ("attention" in vars(b)) for b in blocks)


def pools_from(fix: dict) -> tuple[PromptPool, PromptPool]:
    s, layer = fix["settings"], fix["layer"]
    out = []
    for kind in ("cls", "image"):
        size, length, topk = s[f"pool_size_{kind}"], s[f"len_prompts_{kind}"], s[f"topk_{kind}"]
        pool = PromptPool(layer + 1, size, length, 768, topk, torch.Generator().manual_seed(0))
        with torch.no_grad():
            pool.keys[layer] = fix[f"{kind}_keys"]
            pool.prompts[layer] = fix[f"{kind}_prompts"]
        out.append(pool)
    return out[0], out[1]


def reference_layout(mask: torch.Tensor) -> torch.Tensor:
    """Keys [tokens, CLS prompts, image prompts] -> the reference's [CLS, CLS prompts, image prompts, patches]."""
    length = mask.shape[1]
    return torch.cat([mask[..., :1], mask[..., length:], mask[..., 1:length]], dim=-1)


@pytest.mark.parametrize("random", [False, True])
def test_selection_mask_and_pool_loss_equal_the_reference(random):
    fix = torch.load(FIXTURE, weights_only=False)
    x, layer = fix["x"].float(), fix["layer"]
    pool_cls, pool_image = pools_from(fix)
    if random:
        torch.manual_seed(fix["seed"])
    with torch.no_grad():
        dist_cls, index_cls = pool_cls.select(x[:, 0], layer, random)
        dist_image, index_image = pool_image.select(x[:, 1:].reshape(-1, 768), layer, random)
        mask = tcpa_mask(pool_cls.entries(index_cls), pool_image.entries(index_image).view(2, 196, -1))
    expected = fix["mask_random" if random else "mask"]
    assert torch.equal(reference_layout(mask).bool(), expected)
    dist = fix["dist_random" if random else "dist"]
    assert (dist_cls + dist_image).item() == pytest.approx(dist.item(), rel=1e-5)
    assert expected[:, 0].sum(-1).tolist() == [197 + 3 * 2] * 2  # CLS: every token and its 3 entries of 2 prompts


def test_prompts_are_the_cls_then_the_image_prompts(ctx):  # noqa: F811
    """``layer_prompts`` (eval, no Fourier) is the reference's ``get_prompts``: every CLS prompt, then every image
    prompt; with Fourier it is Re FFT over the width, then over the prompts."""
    fix = torch.load(FIXTURE, weights_only=False)
    method = build(ctx, fourier=False).eval()
    method.pool_cls, method.pool_image = pools_from(fix)
    like = torch.zeros(2, 197, 768)
    with torch.no_grad():
        assert torch.equal(method.layer_prompts(fix["layer"], like), fix["prompts"])
    fourier = build(ctx).eval()
    fourier.pool_cls, fourier.pool_image = method.pool_cls, method.pool_image
    with torch.no_grad():
        got = fourier.layer_prompts(fix["layer"], like)
    assert torch.allclose(got, torch.fft.fft2(fix["prompts"]).real, atol=1e-3, rtol=1e-5)


def test_pool_loss_and_mask_by_hand_on_a_toy():
    """Keys e0, e1 and top-1: the token (0.6, 0.8) picks e1, 1 − cos = 0.2. Three tokens (CLS and two patches), one
    CLS prompt chosen of two, image prompts chosen per patch."""
    pool = PromptPool(1, 2, 1, 2, 1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        pool.keys[0] = torch.eye(2) * 3.0  # the scale of a key does not matter
    dist, index = pool.select(torch.tensor([[0.6, 0.8]]), 0, random=False)
    assert index.tolist() == [[1]] and dist.item() == pytest.approx(0.2, rel=1e-6)
    mask = tcpa_mask(torch.tensor([[0.0, 1.0]]), torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    assert mask[0].tolist() == [
        [1, 1, 1, 0, 1, 0, 0],  # CLS: tokens, its CLS prompt, no image prompt
        [1, 1, 1, 0, 0, 1, 0],  # patch 1: tokens, its image prompt
        [1, 1, 1, 0, 0, 0, 1],
    ]


def reference_block(block, x, prompts, mask, after_softmax=True):
    """The reference's forward_block/forward_attn on open_clip's weights: [CLS, prompts, patches] through ln_1 and
    the attention, the prompts' rows dropped, the weights multiplied by the mask (its layout) after the softmax."""
    attn, m = block.attn, prompts.shape[1]
    seq = torch.cat([x[:, :1], prompts, x[:, 1:]], 1)
    h = block.ln_1(seq)
    b, n, width = h.shape
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(b, n, 3, heads, width // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-2, -1) * (width // heads) ** -0.5
    if not after_softmax:
        rows = torch.cat([scores[:, :, :1], scores[:, :, 1 + m :]], 2)
        weights = rows.masked_fill(mask.unsqueeze(1) == 0, float("-inf")).softmax(-1)
    else:
        weights = scores.softmax(-1)
        weights = torch.cat([weights[:, :, :1], weights[:, :, 1 + m :]], 2) * mask.unsqueeze(1)
    out = F.linear((weights @ v).transpose(1, 2).reshape(b, n - m, width), attn.out_proj.weight, attn.out_proj.bias)
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@pytest.mark.parametrize("after_softmax", [True, False])
def test_prompt_attention_equals_the_reference_layout_by_hand(bb, images, after_softmax):  # noqa: F811
    model, v = bb.model, bb.model.visual
    width, m, length = deep_prompts.vision_width(model), 5, 17
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randn(len(images), m, width, generator=gen) for _ in range(2)]  # blocks 0 and 1 of 4
    masks = [(torch.rand(len(images), length, length + m, generator=gen) > 0.4).float() for _ in range(2)]
    for mk in masks:
        mk[..., :length] = 1  # every token sees the tokens
    seen = []

    def plan(j):
        def give(x):
            seen.append(x)
            return prompts[j], masks[j]

        return give

    with torch.no_grad():
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = v.ln_pre(torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding)
        inputs = []
        for j, block in enumerate(v.transformer.resblocks):
            inputs.append(x)
            x = reference_block(block, x, prompts[j], reference_layout(masks[j]), after_softmax) if j < 2 else block(x)
        expected = v.ln_post(x[:, 0]) @ v.proj
        with attention_mask.prompt_attention(model, [plan(0), plan(1)], after_softmax=after_softmax):
            got = model.encode_image(images)
    assert torch.allclose(got, expected, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(seen, inputs[:2], strict=True))  # plans read x
    assert not torch.allclose(got, model.encode_image(images), atol=1e-3)
    assert hooks(model) == 0  # nothing left on the shared backbone
    with torch.no_grad():  # no prompts, no mask: the plain attention
        with attention_mask.prompt_attention(model, [lambda x: (x[:, :0], None)] * 4):
            plain = model.encode_image(images)
    assert torch.allclose(plain, model.encode_image(images), atol=1e-5)
    hidden = torch.cat([torch.ones(len(images), length, length), torch.zeros(len(images), length, m)], -1)
    with torch.no_grad():  # every prompt masked out of a masked softmax: the plain attention again
        with attention_mask.prompt_attention(model, [lambda x: (prompts[0], hidden)] * 4, after_softmax=False):
            masked = model.encode_image(images)
    assert torch.allclose(masked, model.encode_image(images), atol=1e-5)
    with pytest.raises(deep_prompts.DeepPromptError, match="blocks"):
        with attention_mask.prompt_attention(model, [None] * 5):
            pass


def test_no_pools_is_zero_shot_with_the_fixed_prompts(ctx, images):  # noqa: F811
    tcpa = build(ctx, depth_vision=0).eval()
    vpt = build(ctx, "vpt_deep", depth_vision=0).eval()
    with torch.no_grad():
        assert torch.equal(tcpa(images), vpt(images))
        assert not torch.equal(build(ctx).eval()(images), vpt(images))  # the pools do act
    loss, parts = tcpa.loss(images, torch.tensor([0, 1, 2, 0]))
    assert parts["pool"] == 0.0 and loss.item() == pytest.approx(parts["ce"])


def test_loss_preset_gradients_and_the_random_clock(ctx, bb, images):  # noqa: F811
    tcpa = build(ctx).train()
    c = tcpa.config
    assert (c.lr, c.epochs, c.batch_size, c.optimizer, c.weight_decay) == (0.01, 100, 128, "adamw", 0.1)
    assert (c.pool_size_cls, c.topk_cls, c.length_cls, c.pool_weight, c.random_epochs) == (18, 10, 1, 0.01, 10)
    assert tcpa.pool_cls.keys.shape == (4, 18, deep_prompts.vision_width(bb.model))  # 12 blocks capped at 4
    assert {n for n, p in tcpa.named_parameters() if p.requires_grad} == {
        f"pool_{k}.{w}" for k in ("cls", "image") for w in ("keys", "prompts")
    }
    labels = torch.tensor([0, 1, 2, 0])
    features, pool = tcpa.encode(images)
    assert 0 < pool.item() < 4 * 2 * 2  # four layers, two pools, 1 − cos in [0, 2]
    loss, parts = tcpa.loss(images, labels)
    assert loss.item() == pytest.approx(parts["ce"] + 0.01 * parts["pool"], rel=1e-6)
    loss.backward()
    for p in tcpa.parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0
    assert hooks(bb.model) == 0
    # the first random_epochs epochs of training draw the entries; evaluation and later epochs match keys
    assert tcpa.random_selection() and not tcpa.eval().random_selection()
    tcpa.train().epoch_end(9)
    assert not tcpa.random_selection() and tcpa.loop_state() == {"epochs_done": 10}
    tcpa.load_loop_state({"epochs_done": 3})
    assert tcpa.random_selection()
    eval_a, eval_b = (tcpa.eval()(images) for _ in range(2))
    assert torch.equal(eval_a, eval_b)


def test_runs_end_to_end_and_resumes_exactly(tmp_path_factory):
    """Through the image runner, a run killed after its first epoch (the random-selection epoch) and resumed ends
    as the uninterrupted run: the epoch clock travels with the checkpoint."""
    from test_deep_prompts import run_and_resume

    overrides = {"epochs": 3, "batch_size": 2, "warmup_epochs": 0, "random_epochs": 1}
    full = run_and_resume(tmp_path_factory, "tcpa", {**overrides, "pool_size_image": 4, "topk_image": 2})
    assert 0 <= full["hm"] <= 100 and len(full["train"]["loss_history"]) == 3
    assert full["method_info"]["random_epochs"] == 1 and not math.isnan(full["base_acc"])


def test_mixup_equals_the_references_get_mixup_fn_on_its_draws():
    """timm's Mixup as the reference's get_mixup_fn builds it: the same images and soft targets at the λ it drew,
    mixed or not; with the image's own target instead of its mirror's, or without smoothing, they differ."""
    fix = torch.load(MIXUP_FIXTURE, weights_only=False)
    cfg = get_method("tcpa").make_config({})
    settings = fix["settings"]
    assert (cfg.mixup, cfg.mixup_alpha, cfg.mixup_prob, cfg.label_smoothing) == (
        True,
        settings["mixup_alpha"],
        settings["prob"],
        settings["label_smoothing"],
    )
    assert settings["cutmix_alpha"] == 0 and settings["mode"] == "batch"
    for case in fix["cases"]:
        images, target = mixup_batch(fix["images"], fix["labels"], settings["classes"], case["lam"], 0.1)
        assert torch.allclose(images, case["images"], rtol=1e-5, atol=1e-7), case["seed"]
        assert torch.allclose(target, case["target"], rtol=1e-5, atol=1e-7), case["seed"]
        assert torch.allclose(target.sum(1), torch.ones(len(target)))
        if case["lam"] != 1.0:
            _, unsmoothed = mixup_batch(fix["images"], fix["labels"], settings["classes"], case["lam"], 0.0)
            assert not torch.allclose(unsmoothed, case["target"], rtol=1e-5, atol=1e-7)
            _, unmixed = mixup_batch(fix["images"], fix["labels"], settings["classes"], 1.0, 0.1)
            assert not torch.allclose(unmixed, case["target"], rtol=1e-5, atol=1e-7)
    with pytest.raises(Exception, match="even batch"):
        mixup_batch(fix["images"][:5], fix["labels"][:5], 5, 0.5, 0.1)


def test_mixup_draws_from_the_seeded_generator():
    """Whether to mix, then λ ~ Beta(α, α): the same draws after the same seed; about half the batches mixed."""
    torch.manual_seed(3)
    first = [mixup_draw(0.5, 0.8) for _ in range(400)]
    torch.manual_seed(3)
    assert first == [mixup_draw(0.5, 0.8) for _ in range(400)]
    mixed = [lam for lam in first if lam != 1.0]
    assert 150 < len(mixed) < 250 and all(0 <= lam <= 1 for lam in mixed)
    assert all(mixup_draw(0.0, 0.8) == 1.0 for _ in range(20))


def test_mixup_loss_is_the_soft_target_cross_entropy(ctx, images):  # noqa: F811
    """In training, the loss is −Σ t log softmax on the mixed images (drawn again from the same seed by hand), the
    last image of an odd batch dropped; mixup off, or in evaluation, the plain cross-entropy."""
    tcpa = build(ctx, mixup_prob=1.0, prompt_dropout=0.0, random_epochs=0).train()
    labels = torch.tensor([0, 1, 2])
    torch.manual_seed(5)
    loss, parts = tcpa.loss(images[:3], labels)
    torch.manual_seed(5)
    lam = mixup_draw(1.0, 0.8)
    assert parts["mixup_lambda"] == lam != 1.0
    mixed, target = mixup_batch(images[:2], labels[:2], len(CLASSES), lam, 0.1)
    with torch.no_grad():
        features, pool = tcpa.encode(mixed)
        logits = tcpa.logit_scale * features @ tcpa.classifier().T
    expected = -(target * F.log_softmax(logits, -1)).sum(-1).mean() + 0.01 * pool
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = build(ctx, mixup=False, prompt_dropout=0.0, random_epochs=0).train()
    plain.load_state_dict(tcpa.state_dict())
    loss, parts = plain.loss(images[:3], labels)
    with torch.no_grad():
        features, pool = plain.encode(images[:3])
        ce = F.cross_entropy(plain.logit_scale * features @ plain.classifier().T, labels)
    assert loss.item() == pytest.approx((ce + 0.01 * pool).item(), rel=1e-5) and parts["mixup_lambda"] == 1.0


def test_a_run_with_mixup_is_deterministic(tmp_path_factory):
    """With mixup on (every batch mixed), two runs of the same seed (one killed after its first epoch and resumed)
    end with the same losses and parameters, and the λs drawn are in the run's curves."""
    from test_deep_prompts import run_and_resume

    overrides = {"epochs": 2, "batch_size": 2, "warmup_epochs": 0, "random_epochs": 0, "mixup_prob": 1.0}
    full = run_and_resume(tmp_path_factory, "tcpa", {**overrides, "pool_size_image": 4, "topk_image": 2})
    lams = [row["mixup_lambda"] for row in full["train"]["curves"]]
    assert all(0 < lam < 1 for lam in lams) and full["method_info"]["mixup"]["alpha"] == 0.8
