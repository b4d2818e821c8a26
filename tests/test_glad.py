"""GLAD (vlprompt.methods.glad): CLIP-LoRA with a gradient steered by a SAM reference gradient.

No official code exists, so: the rule on a two-parameter quadratic whose gradients are written down by hand;
β = 0 is one CLIP-LoRA step against CLIP-LoRA's reference fixture (MaxZanella/CLIP-LoRA's own code on the tiny
OpenAI-layout CLIP); β > 0 is the mix of the gradient at θ and the gradient taken by hand at θ + ρ g/‖g‖ on a
second copy of the method, and differs from CLIP-LoRA's (the test fails when the regulariser is removed); the
adapters come back bit for bit after the SAM pass.
"""

from __future__ import annotations

import pytest
import torch

from test_clip_lora import fixture
from test_reference_equivalence import backbone, close, inputs, loop_step  # noqa: F401  (module fixtures)
from vlprompt.clip.backbone import PromptedTextEncoder
from vlprompt.methods import MethodContext, MethodError, get_method
from vlprompt.methods.glad import regularized_gradient
from vlprompt.training.loop import lr_at


def quadratic(h: tuple[float, float], b: tuple[float, float]):
    """L(w) = ½ Σ h_i w_i² − b_i w_i on two one-element parameters, both at 1."""
    w = [torch.ones(1, requires_grad=True), torch.ones(1, requires_grad=True)]

    def loss_at():
        return sum(0.5 * hi * wi.pow(2).sum() - bi * wi.sum() for hi, bi, wi in zip(h, b, w, strict=True))

    grads = list(torch.autograd.grad(loss_at(), w))
    return w, grads, loss_at


def values(ts) -> list[float]:
    return [float(t.detach()) for t in ts]


def test_the_rule_on_a_quadratic_by_hand():
    # h = (4, 2), b = (1, −2) at w = (1, 1): g = (3, 4), ‖g‖ = 5; ρ = 0.5 gives ε = (0.3, 0.4) and
    # g_sam = (4·1.3 − 1, 2·1.4 + 2) = (4.2, 4.8)
    w, g, loss_at = quadratic((4.0, 2.0), (1.0, -2.0))
    assert values(g) == [3.0, 4.0]
    assert values(regularized_gradient(w, g, loss_at, rho=0.5, mix=1.0)) == pytest.approx([4.2, 4.8])
    assert values(regularized_gradient(w, g, loss_at, rho=0.5, mix=0.5)) == pytest.approx([3.6, 4.4])
    assert values(regularized_gradient(w, g, loss_at, rho=0.5, mix=0.0)) == [3.0, 4.0]
    assert values(regularized_gradient(w, g, loss_at, rho=0.5, rule="project")) == [3.0, 4.0]  # no conflict
    assert values(w) == [1.0, 1.0] and values(g) == [3.0, 4.0]  # parameters restored, g untouched
    # h = (−4, 0), b = (−7, −4): g = (3, 4); ρ = 5 gives ε = (3, 4), g_sam = (−4·4 + 7, 4) = (−9, 4), g·g_sam = −11,
    # so "project" removes g's component along g_sam: g + (11/97)·(−9, 4)
    w, g, loss_at = quadratic((-4.0, 0.0), (-7.0, -4.0))
    assert values(g) == [3.0, 4.0]
    assert values(regularized_gradient(w, g, loss_at, rho=5.0, mix=1.0)) == pytest.approx([-9.0, 4.0])
    projected = regularized_gradient(w, g, loss_at, rho=5.0, rule="project")
    assert values(projected) == pytest.approx([3 - 99 / 97, 4 + 44 / 97])
    assert float(sum(p * s for p, s in zip(projected, (-9.0, 4.0), strict=True))) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(MethodError, match="gradient_rule"):
        regularized_gradient(w, g, loss_at, rho=5.0, rule="pcgrad")


def glad(backbone, fix: dict, **overrides):  # noqa: F811
    """GLAD on the CLIP-LoRA fixture's classes, template and initial adapters (dropout 0: deterministic)."""
    ctx = MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=fix["classnames"],
        template=fix["settings"]["template"],
        device=torch.device("cpu"),
        seed=0,
    )
    cls = get_method("glad")
    method = cls(cls.make_config({"dropout": 0.0, **overrides}), ctx)
    with torch.no_grad():
        for name, p in method.adapters.named_parameters():
            p.copy_(fix["init"][name])
    return method


def ce_gradient(method, images, labels) -> dict[str, torch.Tensor]:
    method.zero_grad(set_to_none=True)
    method.loss(images, labels)[0].backward()
    grads = {n: p.grad.clone() for n, p in method.adapters.named_parameters()}
    method.zero_grad(set_to_none=True)
    return grads


def test_without_the_regulariser_a_step_is_clip_lora_against_its_reference(backbone, inputs, tmp_path):  # noqa: F811
    fix = fixture()
    method = glad(backbone, fix, sam_mix=0.0)
    images, labels = inputs["images"], fix["labels"]
    loop_step(method, images, labels, tmp_path)
    for name, p in method.adapters.named_parameters():
        close(p.grad, fix["grad"][name], what=f"gradient of {name}")
        close(p, fix["after"][name], what=f"{name} after one step")


@pytest.mark.parametrize("mix", [0.5, 1.0])
def test_the_step_mixes_the_gradient_at_theta_and_at_the_sam_point(backbone, inputs, tmp_path, mix):  # noqa: F811
    fix = fixture()
    images, labels = inputs["images"], fix["labels"]
    rho = 0.05
    by_hand = glad(backbone, fix, sam_mix=0.0)
    g = ce_gradient(by_hand, images, labels)
    close(torch.cat([t.flatten() for t in g.values()]), torch.cat([fix["grad"][n].flatten() for n in g]), what="g")
    norm = torch.sqrt(sum((t**2).sum() for t in g.values()))
    with torch.no_grad():
        for name, p in by_hand.adapters.named_parameters():
            p.add_(rho * g[name] / norm)
    g_sam = ce_gradient(by_hand, images, labels)

    method = glad(backbone, fix, sam_mix=mix, sam_rho=rho)
    assert method.config.gradient_rule == "mix"
    method.zero_grad(set_to_none=True)
    method.loss(images, labels)[0].backward()
    method.adjust_gradients(images, labels)
    for name, p in method.adapters.named_parameters():
        assert torch.equal(p.detach(), fix["init"][name]), f"{name} not restored after the SAM pass"
        expected = (1 - mix) * g[name] + mix * g_sam[name]
        close(p.grad, expected, what=f"regularised gradient of {name}")
    flat = torch.cat([p.grad.flatten() for p in method.adapters.parameters()])
    plain = torch.cat([t.flatten() for t in g.values()])
    assert (flat - plain).abs().max() > 1e-3 * plain.abs().max()  # without the regulariser this fails

    stepped = glad(backbone, fix, sam_mix=mix, sam_rho=rho)  # the same through the shared loop's hook
    loop_step(stepped, images, labels, tmp_path)
    cfg = stepped.config
    lr = lr_at(cfg, 0)
    for (name, p), q in zip(stepped.adapters.named_parameters(), method.adapters.parameters(), strict=True):
        close(p.grad, q.grad, what=f"loop gradient of {name}")
        # AdamW's first step on g̃: decay, then lr · m̂ / (√v̂ + eps) with m̂ = g̃ and v̂ = g̃²
        after = fix["init"][name] * (1 - lr * cfg.weight_decay) - lr * q.grad / (q.grad.abs() + cfg.adam_eps)
        close(p, after, what=f"{name} after one AdamW step on the regularised gradient")


def test_preset_and_errors(backbone):  # noqa: F811
    cfg = get_method("glad").Config()
    lora = get_method("clip_lora").Config()
    assert (cfg.gradient_rule, cfg.sam_mix, cfg.sam_rho) == ("mix", 0.5, 0.05)
    assert (cfg.rank, cfg.alpha, cfg.dropout, cfg.lr, cfg.epochs) == (
        lora.rank,
        lora.alpha,
        lora.dropout,
        lora.lr,
        lora.epochs,
    )
    fix = fixture()
    with pytest.raises(MethodError, match="gradient_rule"):
        glad(backbone, fix, gradient_rule="pcgrad")
    with pytest.raises(MethodError, match="sam_mix"):
        glad(backbone, fix, sam_mix=1.5)


def test_a_run_trains_resumes_and_evaluates_on_images(tmp_path_factory):
    from test_deep_prompts import run_and_resume

    full = run_and_resume(tmp_path_factory, "glad", {"epochs": 2, "batch_size": 2})
    assert full["base_n"] == 4 and full["train"]["steps_per_epoch"] == 2
    assert full["method_info"]["gradient_rule"].startswith("mix")


@pytest.mark.parametrize("method", ["glad", "clip_lora"])
@pytest.mark.parametrize("name", ["base2novel.yaml", "fewshot.yaml", "crossdataset.yaml", "domain_generalization.yaml"])
def test_the_real_configs_give_clip_loras_iteration_budget(name, method):
    """500 × K iterations of batch 32 (the last batch kept) as whole epochs: ⌈500 K / ⌈K · classes / 32⌉⌉, with the
    base classes (⌈C/2⌉) in base-to-new."""
    import math

    from doc_commands import REPO
    from vlprompt.data.registry import get_dataset
    from vlprompt.experiment.config import load_config, method_settings

    cfg = load_config(REPO / "config" / name)
    assert method in cfg["methods"]
    for dataset in cfg["datasets"]:
        n = get_dataset(dataset).n_classes
        classes = math.ceil(n / 2) if cfg["protocol"] == "base2new" else n
        for k in cfg["shots"]:
            budget = math.ceil(500 * k / math.ceil(k * classes / 32))
            epochs = method_settings(cfg, method, dataset, k).get("epochs", get_method(method).Config().epochs)
            assert epochs == budget, (name, method, dataset, k, epochs, budget)
