"""Decoupled attention for prompted blocks (vlprompt.clip.decoupled_attention) and DPL (vlprompt.methods.dpl).

No official code exists for DPL, so: the four sub-processes by hand on a one-head, two-token toy; the exact
recombination equals open_clip's own blocks with deep prompts (vision, and text with its causal mask); a gated
recombination equals a hand-written loop over open_clip's vision blocks; the context leaves the backbone unchanged
and refuses to stack with LoRA; DPL with ``prompt_gate`` None is VPT-deep exactly, and with a gate it is not.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlprompt.clip import deep_prompts
from vlprompt.clip.backbone import PromptedTextEncoder
from vlprompt.clip.decoupled_attention import (
    DecoupledAttentionError,
    decoupled_attention,
    exact,
    split_attention,
)
from vlprompt.clip.lora import LoRAAdapters, lora_attention
from vlprompt.methods import MethodContext, MethodError, get_method
from vlprompt.methods.dpl import gated

CLASSES = ["red circle", "blue square", "green star"]


@pytest.fixture(scope="module")
def bb(pocket_random_backbone):
    return pocket_random_backbone


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_the_sub_processes_on_a_two_token_toy_by_hand():
    # one head of width 1: an instance x (q 1, k 2, v 3) and a prompt p (q −1, k 1, v 5); scores q·k (√1 = 1)
    q = torch.tensor([1.0, -1.0]).view(1, 1, 2, 1)
    k = torch.tensor([2.0, 1.0]).view(1, 1, 2, 1)
    v = torch.tensor([3.0, 5.0]).view(1, 1, 2, 1)
    prompts = torch.tensor([False, True])
    parts = split_attention(q, k, v, prompts)
    # one key per set: each restricted softmax is 1, so o_X = v_x = 3 and o_P = v_p = 5 for both queries
    assert parts.to_instances.flatten().tolist() == [3.0, 3.0] and parts.to_prompts.flatten().tolist() == [5.0, 5.0]
    # ℓ_X = s(·, x): x·x = 2, p·x = −2; ℓ_P = s(·, p): x·p = 1, p·p = −1
    assert parts.lse_instances.flatten().tolist() == [2.0, -2.0]
    assert parts.lse_prompts.flatten().tolist() == [1.0, -1.0]
    # exact: instance query w = e¹/(e² + e¹) = σ(−1); prompt query w = e⁻¹/(e⁻² + e⁻¹) = σ(1)
    w_x, w_p = 1 / (1 + math.e), 1 / (1 + math.exp(-1))
    expected = [3 * (1 - w_x) + 5 * w_x, 3 * (1 - w_p) + 5 * w_p]
    assert exact(parts).flatten().tolist() == pytest.approx(expected)
    joint = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
    assert exact(parts).flatten().tolist() == pytest.approx(joint.flatten().tolist())
    # the gate fixes the instance query's share on the prompts; the prompt query stays exact
    assert gated(0.25)(parts).flatten().tolist() == pytest.approx([3 * 0.75 + 5 * 0.25, expected[1]])
    # a query with no key of a set (an additive −∞ mask): o = 0, ℓ = −∞, and exact attention is the other set's
    mask = torch.tensor([[0.0, float("-inf")], [0.0, 0.0]])
    masked = split_attention(q, k, v, prompts, mask)
    assert masked.to_prompts.flatten()[0] == 0 and masked.lse_prompts.flatten()[0] == float("-inf")
    assert exact(masked).flatten()[0] == 3.0


def test_exact_recombination_is_open_clips_attention_with_deep_prompts(bb, images):
    model = bb.model
    width = deep_prompts.vision_width(model)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randn(3, width, generator=gen) for _ in range(2)]
    with torch.no_grad():
        plain = deep_prompts.encode_image(model, images, prompts)
        with decoupled_attention(model, "vision", 3):
            ours = deep_prompts.encode_image(model, images, prompts)
    assert torch.allclose(ours, plain, atol=1e-5)
    # the text tower, causal mask and prompts at positions 1..n
    enc = PromptedTextEncoder(model)
    tokens = bb.tokenizer(["X X red circle.", "X X blue square of many words."])
    deep = [torch.randn(2, deep_prompts.text_width(model), generator=gen) for _ in range(3)]
    with torch.no_grad():
        embeddings = enc.embed(tokens)
        plain = deep_prompts.encode_text(enc, embeddings, tokens.argmax(-1), deep)
        with decoupled_attention(model, "text", 2):
            ours = deep_prompts.encode_text(enc, embeddings, tokens.argmax(-1), deep)
    assert torch.allclose(ours, plain, atol=1e-5)


def gated_attention_by_hand(block, x: torch.Tensor, n: int, gate: float) -> torch.Tensor:
    """One block's attention written out: per head, instance queries (1 − γ)·softmax over the instances +
    γ·softmax over the prompts; prompt queries the joint softmax (x: (B, L, width), prompts the last n)."""
    attn = block.attn
    width, heads = attn.embed_dim, attn.num_heads
    d = width // heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).split(width, dim=-1)
    out = torch.zeros_like(x)
    length = x.shape[1]
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        s = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(d)  # (B, L, L)
        inst, prom = s[..., : length - n], s[..., length - n :]
        vi, vp = v[:, : length - n, cols], v[:, length - n :, cols]
        for i in range(length):
            if i < length - n:
                o = (1 - gate) * torch.softmax(inst[:, i], -1).unsqueeze(1) @ vi
                o = o + gate * torch.softmax(prom[:, i], -1).unsqueeze(1) @ vp
            else:
                o = torch.softmax(s[:, i], -1).unsqueeze(1) @ v[..., cols]
            out[:, i, cols] = o[:, 0]
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


def test_gated_recombination_equals_a_hand_written_block_loop(bb, images):
    model, v = bb.model, bb.model.visual
    width = deep_prompts.vision_width(model)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randn(3, width, generator=gen) for _ in range(3)]  # depth 3 of 4 blocks
    with torch.no_grad():
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding
        x = v.ln_pre(torch.cat([x, prompts[0].expand(len(x), -1, -1)], 1))
        for j, block in enumerate(v.transformer.resblocks):
            if 0 < j < len(prompts):
                x = torch.cat([x[:, :-3], prompts[j].expand(len(x), -1, -1)], 1)
            x = x + gated_attention_by_hand(block, block.ln_1(x), 3, 0.3)
            x = x + block.mlp(block.ln_2(x))
        expected = v.ln_post(x[:, 0]) @ v.proj
        with decoupled_attention(model, "vision", 3, gated(0.3)):
            got = deep_prompts.encode_image(model, images, prompts)
        plain = deep_prompts.encode_image(model, images, prompts)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the gate changes the features


def test_the_context_leaves_the_backbone_unchanged_and_refuses_stacking(bb, images):
    model = bb.model
    with torch.no_grad():
        before = model.encode_image(images)
        with decoupled_attention(model, "vision", 1, blocks=[0, 2]):
            with pytest.raises(DecoupledAttentionError, match="already overridden"):
                with decoupled_attention(model, "vision", 1, blocks=[2]):
                    pass
            with pytest.raises(Exception, match="already adapted"):
                with lora_attention(model, LoRAAdapters(model, towers=("vision",))):
                    pass
        assert torch.equal(model.encode_image(images), before)
    assert not any("attention" in vars(b) for b in model.visual.transformer.resblocks)
    with pytest.raises(DecoupledAttentionError, match="no block"):
        with decoupled_attention(model, "vision", 1, blocks=[9]):
            pass


def context(bb) -> MethodContext:
    return MethodContext(
        backbone=bb,
        encoder=PromptedTextEncoder(bb.model),
        classnames=CLASSES,
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=1,
    )


def build(name, bb, **overrides):
    cls = get_method(name)
    return cls(cls.make_config(overrides), context(bb))


def test_dpl_without_the_gate_is_vpt_deep_and_with_it_is_not(bb, images):
    labels = torch.tensor([0, 2, 1])
    vpt = build("vpt_deep", bb)
    dpl = build("dpl", bb, prompt_gate=None)
    assert torch.equal(vpt.vision_ctx, dpl.vision_ctx)  # the same seed draws the same prompts
    grads = []
    for m in (vpt, dpl):
        m.loss(images, labels)[0].backward()
        grads.append(m.vision_ctx.grad.clone())
    with torch.no_grad():
        assert torch.allclose(dpl(images), vpt(images), atol=1e-5)
    assert torch.allclose(grads[1], grads[0], atol=1e-6)
    gatedm = build("dpl", bb)
    assert gatedm.config.prompt_gate == 0.1 and gatedm.config.n_ctx_vision == vpt.config.n_ctx_vision
    with torch.no_grad():
        assert not torch.allclose(gatedm(images), vpt(images), atol=1e-3)
    with pytest.raises(MethodError, match="prompt_gate"):
        build("dpl", bb, prompt_gate=1.5)
    assert not any("attention" in vars(b) for b in bb.model.visual.transformer.resblocks)


def test_dpl_trains_resumes_and_evaluates_on_images(tmp_path_factory):
    from test_deep_prompts import run_and_resume

    full = run_and_resume(tmp_path_factory, "dpl", {"epochs": 2, "batch_size": 2})
    assert full["base_n"] == 4 and full["method_info"]["prompt_gate"].startswith("0.1")
