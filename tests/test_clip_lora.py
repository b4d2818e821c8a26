"""CLIP-LoRA and the LoRA extension point (vlprompt.clip.lora).

Against the reference (``tests/reference/fixtures/clip_lora.pt``, written by ``tests/reference/regenerate.py`` from
MaxZanella/CLIP-LoRA's own ``run_lora`` on the tiny OpenAI-layout CLIP): features, logits, loss, every adapter's
gradient and value after one AdamW step of the shared training loop, and the test logits after it, at 1e-5
relative. Against a hand-written loop over open_clip's blocks: the adapted attention equals W + s·BA in the
projections. And the context leaves the shared backbone unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from test_reference_equivalence import backbone, close, inputs, loop_step  # noqa: F401  (module fixtures)
from vlprompt.clip.backbone import PromptedTextEncoder
from vlprompt.clip.lora import LoRAAdapters, LoRAError, lora_attention
from vlprompt.methods import MethodContext, get_method


def fixture(name: str = "clip_lora") -> dict:
    from reference import tiny_clip

    return torch.load(tiny_clip.FIXTURES / f"{name}.pt", map_location="cpu", weights_only=True)


def clip_lora(backbone, fix: dict, **overrides):  # noqa: F811
    ctx = MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=fix["classnames"],
        template=fix["settings"]["template"],
        device=torch.device("cpu"),
        seed=0,
    )
    cls = get_method("clip_lora")
    method = cls(cls.make_config({"dropout": 0.0, **overrides}), ctx)  # the fixture's masks are the identity
    params = dict(method.adapters.named_parameters())
    assert set(params) == set(fix["init"]), sorted(set(params) ^ set(fix["init"]))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(fix["init"][name])
    return method


def one_step(backbone, inputs, tmp_path, name: str) -> None:  # noqa: F811
    fix = fixture(name)
    method = clip_lora(backbone, fix)
    images, labels = inputs["images"], fix["labels"]
    cfg = method.config
    assert (cfg.rank, cfg.alpha, cfg.targets, cfg.lr, cfg.weight_decay) == (2, 1.0, ("q", "k", "v"), 2e-4, 1e-2)
    assert get_method("clip_lora").Config().dropout == 0.25 == fixture()["settings"]["dropout"]
    assert method.logit_scale == fix["settings"]["logit_scale"]
    with torch.no_grad():
        close(method.text_features(), fix["text_features"], what="text features")
        close(method.image_features(images), fix["image_features"], what="image features")
        close(method(images), fix["logits"], what="logits")
        close(method.loss(images, labels)[0], fix["loss"], what="loss")
    loop_step(method, images, labels, tmp_path)
    params = dict(method.adapters.named_parameters())
    for name, p in params.items():
        close(p.grad, fix["grad"][name], what=f"gradient of {name}")
        close(p, fix["after"][name], what=f"{name} after one step")
    method.eval()
    with torch.no_grad():
        close(method(inputs["val_images"]), fix["test_logits"], what="test logits after the step")


def test_one_step_equals_the_reference(backbone, inputs, tmp_path):  # noqa: F811
    """The preset's path (dropout 0.25: base output plus the adapter on the dropped-out input; masks identity)."""
    one_step(backbone, inputs, tmp_path, "clip_lora")


@pytest.mark.xfail(
    strict=True,
    reason="with dropout 0 the reference's LinearLoRA merges B·A into the weight, runs "
    "the linear layer, then subtracts B·A from the weight's .data in place: the backward through the "
    "layer to its input then uses W instead of W + s·BA, so the adapters of earlier blocks get other "
    "gradients; vlprompt differentiates the adapted layer exactly (forward values agree)",
)
def test_one_step_with_dropout_zero_equals_the_reference(backbone, inputs, tmp_path):  # noqa: F811
    one_step(backbone, inputs, tmp_path, "clip_lora_dropout0")


def test_a_removed_adapter_breaks_the_agreement(backbone, inputs):  # noqa: F811
    """The fixture can fail: without the value adapters the logits leave the reference's."""
    fix = fixture()
    method = clip_lora(backbone, fix)
    with torch.no_grad():
        for name, p in method.adapters.named_parameters():
            if "_v_B" in name:
                p.zero_()
        err = (method(inputs["images"]) - fix["logits"]).abs().max()
    assert err > 1e-3


def adapted_by_hand(block, x, adapters, tower: str, index: int) -> torch.Tensor:
    """open_clip's attention with W + s·BA substituted in q, k, v (x batch first), as nn.MultiheadAttention."""
    attn = block.attn
    w = attn.in_proj_weight.clone()
    width = attn.embed_dim
    for part, t in enumerate("qkv"):
        pair = adapters.pair(tower, index, t)
        if pair is not None:
            w[part * width : (part + 1) * width] += adapters.scaling * pair[1] @ pair[0]
    assert attn.batch_first  # open_clip's blocks are batch first; F.multi_head_attention_forward is not
    seq = x.transpose(0, 1)
    out, _ = F.multi_head_attention_forward(
        seq,
        seq,
        seq,
        width,
        attn.num_heads,
        w,
        attn.in_proj_bias,
        None,
        None,
        False,
        0.0,
        attn.out_proj.weight,
        attn.out_proj.bias,
        training=False,
        need_weights=False,
    )
    return out.transpose(0, 1)


def test_adapted_attention_equals_the_merged_weights(backbone):  # noqa: F811
    model = backbone.model
    gen = torch.Generator().manual_seed(3)
    adapters = LoRAAdapters(model, towers=("vision",), targets=("q", "v"), rank=3, alpha=2.0, generator=gen)
    with torch.no_grad():
        for name, p in adapters.named_parameters():
            if name.endswith("_B"):
                p.copy_(torch.randn(p.shape, generator=gen))
    assert adapters.scaling == pytest.approx(2.0 / math.sqrt(3))
    block = model.visual.transformer.resblocks[1]
    x = torch.randn(2, 17, block.attn.embed_dim, generator=gen)
    with lora_attention(model, adapters), torch.no_grad():
        ours = block.attention(x)
    close(ours, adapted_by_hand(block, x, adapters, "vision", 1), what="adapted attention")


def test_the_context_leaves_the_backbone_unchanged_and_refuses_nesting(backbone, inputs):  # noqa: F811
    model = backbone.model
    images = inputs["images"]
    with torch.no_grad():
        before = model.encode_image(images)
        adapters = LoRAAdapters(model, generator=torch.Generator().manual_seed(0))
        with lora_attention(model, adapters):  # B = 0: a fresh adapter changes nothing
            close(model.encode_image(images), before, what="fresh adapters")
            with pytest.raises(LoRAError, match="already adapted"):
                with lora_attention(model, adapters):
                    pass
        for p in adapters.parameters():
            p.add_(0.5)
        with lora_attention(model, adapters):
            assert (model.encode_image(images) - before).abs().max() > 1e-3
        assert torch.equal(model.encode_image(images), before)
    assert not any("attention" in vars(b) for b in model.visual.transformer.resblocks)


def test_dropout_acts_on_the_adapters_input_only(backbone):  # noqa: F811
    model = backbone.model
    adapters = LoRAAdapters(
        model, towers=("text",), targets=("q",), dropout=0.5, generator=torch.Generator().manual_seed(0)
    )
    x = torch.ones(2, 5, adapters.text_0_q_A.shape[1])
    adapters.train()
    torch.manual_seed(0)
    d = adapters.delta(x, "text", 0, "q")
    torch.manual_seed(0)
    mask = F.dropout(x, 0.5, training=True)
    expected = mask @ adapters.text_0_q_A.t() @ adapters.text_0_q_B.t() * adapters.scaling
    close(d, expected, what="dropped-out adapter input")
    adapters.eval()
    close(adapters.delta(x, "text", 0, "q"), x @ adapters.text_0_q_A.t() @ adapters.text_0_q_B.t(), what="eval")
    with pytest.raises(LoRAError, match="no block"):
        LoRAAdapters(model, towers=("text",), layers={"text": [7]})


def test_fresh_adapters_are_zero_shot_clip(pocket_random_backbone):
    from vlprompt.clip.backbone import encode_prompts

    bb = pocket_random_backbone
    names = ["red circle", "blue square", "green star"]
    ctx = MethodContext(
        backbone=bb,
        encoder=PromptedTextEncoder(bb.model),
        classnames=names,
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=1,
    )
    cls = get_method("clip_lora")
    method = cls(cls.make_config(), ctx).eval()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        close(method.text_features(), encode_prompts(bb, [f"a photo of a {n}." for n in names]), what="text")
        close(method.image_features(images), F.normalize(bb.model.encode_image(images), dim=-1), what="image")
    assert {n for n, p in method.named_parameters() if p.requires_grad} == {
        f"adapters.{tower}_{i}_{t}_{m}" for tower in ("text", "vision") for i in range(4) for t in "qkv" for m in "AB"
    }
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_a_run_trains_resumes_and_evaluates_on_images(tmp_path_factory):
    """Through the image runner: metrics, model, and a killed run resumed to the same adapters."""
    from test_deep_prompts import run_and_resume

    full = run_and_resume(tmp_path_factory, "clip_lora", {"epochs": 3, "batch_size": 2})
    assert full["base_n"] == 4 and full["new_n"] == 4 and full["train"]["steps_per_epoch"] == 2
