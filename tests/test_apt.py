"""APT: the approximated prompt module against the reference's own ``approximate_prompt`` (DoubtedSteam/APT,
``tests/reference/fixtures/apt_module.pt``, written by ``tests/reference/regenerate_apt.py``) and on a hand-computed
toy; the attention-output extension against a hand-written loop over open_clip's blocks; and the exact reduction to
zero-shot CLIP with the fixed prompts (VPT-deep at depth 0) when the memory is zero."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from test_deep_prompts import bb, ctx, mini  # noqa: F401  (the pocket CLIP, random weights; its method context)
from vlprompt.clip import attention_output, deep_prompts
from vlprompt.methods import get_method
from vlprompt.methods.apt import ApproximatePrompt

FIXTURE = Path(__file__).parent / "reference" / "fixtures" / "apt_module.pt"
CLASSES = ["red circle", "blue square", "green star"]


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build(ctx, name="apt", **overrides):  # noqa: F811
    cls = get_method(name)
    return cls(cls.make_config(overrides), ctx)


def hooks(model) -> int:
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    return sum(len(b.attn._forward_pre_hooks) + len(b.attn._forward_hooks) for b in blocks)


def module_from(params: dict) -> ApproximatePrompt:
    width, memory, rank = params["memory"].shape[1], params["memory"].shape[0], params["down"].shape[0]
    module = ApproximatePrompt(width, memory, rank, 0.0, torch.Generator().manual_seed(0)).train()
    with torch.no_grad():
        for name, value in params.items():
            getattr(module, name).copy_(value)
    return module


def run(module: ApproximatePrompt, fix: dict) -> tuple[torch.Tensor, dict]:
    out, inp = fix["out"].clone().requires_grad_(), fix["inp"].clone().requires_grad_()
    result = module(out, inp)
    (result * fix["readout"]).sum().backward()
    grads = {n: getattr(module, n).grad for n in ("memory", "down", "up", "scale")}
    return result, {**grads, "out": out.grad, "inp": inp.grad}


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


def test_module_equals_the_reference():
    fix = torch.load(FIXTURE, weights_only=False)
    result, grads = run(module_from(fix["params"]), fix)
    assert close(result, fix["result"])
    for name, expected in fix["grads"].items():
        assert close(grads[name], expected), name


@pytest.mark.parametrize("term", ["low_rank", "strength", "scale"])
def test_the_fixture_sees_each_term(term):
    """Each term removed from the module, the comparison with the reference fails."""
    fix = torch.load(FIXTURE, weights_only=False)
    params = dict(fix["params"])
    module = module_from(params)
    if term == "low_rank":
        with torch.no_grad():
            module.up.zero_()
    elif term == "scale":
        with torch.no_grad():
            module.scale.zero_()
    else:  # e without its weight max_p A
        module.forward = lambda out, inp: out + torch.relu(inp @ module.memory.T) @ module.memory  # type: ignore
    result = module(fix["out"], fix["inp"])
    assert not close(result.detach(), fix["result"])


def test_module_by_hand_on_a_toy():
    """d = 2, M = (1, 0), U = 0 (K = M), s = log 2: h = (2, 0) gives A = 2, e = (2, 0), w = 2, so a = (0.5, 0.5)
    becomes ((0.5, 0.5) + (4, 0)) · 2 = (9, 1); h = (−1, 3) gives A = 0 and a · 2."""
    module = ApproximatePrompt(2, 1, 1, 0.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.memory.copy_(torch.tensor([[1.0, 0.0]]))
        module.scale.fill_(math.log(2.0))
    out = module(torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([[2.0, 0.0], [-1.0, 3.0]]))
    assert torch.allclose(out, torch.tensor([[9.0, 1.0], [1.0, 1.0]]), atol=1e-6)


def test_attention_outputs_equal_a_hand_written_block_loop(bb, images):  # noqa: F811
    model, v = bb.model, bb.model.visual

    def f(a, h):
        return 2.0 * a + h.sin()

    modifiers = [f, None, f]  # blocks 0 and 2 of 4
    with torch.no_grad():
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = v.ln_pre(torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding)
        for j, block in enumerate(v.transformer.resblocks):
            h = block.ln_1(x)
            a = block.attn(h, h, h, need_weights=False)[0]
            if j < len(modifiers) and modifiers[j] is not None:
                a = f(a, h)
            x = x + block.ls_1(a)
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        expected = v.ln_post(x[:, 0]) @ v.proj
        with attention_output.attention_outputs(model, modifiers):
            got = model.encode_image(images)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, model.encode_image(images), atol=1e-3)
    assert hooks(model) == 0
    # the text tower too, under its causal mask
    tokens = bb.tokenizer(["a photo of a red circle."])
    with torch.no_grad():
        plain = model.encode_text(tokens)
        with attention_output.attention_outputs(model, [f], "text"):
            changed = model.encode_text(tokens)
        with attention_output.attention_outputs(model, [lambda a, h: a], "text"):
            same = model.encode_text(tokens)
    assert torch.equal(same, plain) and not torch.allclose(changed, plain, atol=1e-3) and hooks(model) == 0
    with pytest.raises(deep_prompts.DeepPromptError, match="blocks"):
        with attention_output.attention_outputs(model, [f] * 5):
            pass


def test_zero_memory_is_zero_shot_with_the_fixed_prompts(ctx, images):  # noqa: F811
    apt = build(ctx).eval()
    with torch.no_grad():
        for m in apt.approx:
            m.memory.zero_()
    vpt = build(ctx, "vpt_deep", depth_vision=0).eval()
    with torch.no_grad():
        assert torch.equal(apt(images), vpt(images))
    assert not torch.equal(build(ctx).eval()(images), vpt(images))  # the initial memory does act


def test_preset_parameters_and_gradients(ctx, bb, images):  # noqa: F811
    apt = build(ctx).train()
    c = apt.config
    assert (c.lr, c.epochs, c.batch_size, c.memory, c.rank, c.depth_vision) == (0.0025, 5, 4, 50, 4, 12)
    assert len(apt.approx) == 4  # 12 capped at the pocket CLIP's 4 blocks
    m = apt.approx[0]
    assert m.memory.shape == (50, deep_prompts.vision_width(bb.model)) and m.down.shape[0] == 4
    assert torch.equal(m.up, torch.zeros_like(m.up)) and m.scale.item() == 0.0 and 0.01 < m.memory.std() < 0.03
    trainable = {n for n, p in apt.named_parameters() if p.requires_grad}
    assert trainable == {f"approx.{j}.{w}" for j in range(4) for w in ("memory", "down", "up", "scale")}
    labels = torch.tensor([0, 1, 2, 0])
    loss, parts = apt.loss(images, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(apt(images), labels).item(), rel=1e-6)
    loss.backward()
    for j in range(4):  # U is 0, so D has no gradient at the start (as in the reference); the others do
        for w in ("memory", "up", "scale"):
            assert getattr(apt.approx[j], w).grad.abs().sum() > 0, (j, w)
    assert hooks(bb.model) == 0


def test_runs_end_to_end(mini):  # noqa: F811
    from vlprompt.training import runs

    cfg, root = mini
    cfg = {**cfg, "method_overrides": {"apt": {"epochs": 2, "batch_size": 2}}}
    metrics = runs.run(cfg, "pocket_dark", "apt", 2, 1, root / "runs" / "apt", progress=False)
    assert 0 <= metrics["hm"] <= 100 and len(metrics["train"]["loss_history"]) == 2
