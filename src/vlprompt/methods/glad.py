"""GLAD: LoRA in both CLIP towers trained with a gradient regularised by a sharpness-aware reference gradient.

Peng, Wang, Liu & Chen, "GLAD: Generalizable Tuning for Vision-Language Models" (Generalizable LoRA tuning with
RegulArized GraDient), ICCV Workshops 2025 (arXiv 2507.13089). No official code was released ("The code will be
publicly available"), so this is a documented reading of the abstract and of the caption of the paper's first
figure, the only parts that could be read; every detail they leave open is a Config field marked "assumption"
below, and the catalogue says so. The LoRA part is :mod:`vlprompt.methods.clip_lora` (CLIP-LoRA, whose reference
MaxZanella/CLIP-LoRA at 358f0d7 its fixture checks), unchanged: adapters of rank 2 on q, k, v of every block of
both towers, cross-entropy on the hand-crafted prompts' logits.

What was read: LoRA alone matches prompt methods, but overfits few-shot data; "we use the gradient computed via
Sharpness-Aware Minimization (SAM) as a reference signal to steer the original gradient direction toward a region
shared by both stable solutions and task-specific solutions". The reading here, with θ the adapters' parameters
(A and B of every projection, flattened and concatenated) and L CLIP-LoRA's cross-entropy on the batch:

    g     = ∇_θ L(θ)                                   (the original, task-specific gradient)
    ε     = ρ · g / (‖g‖₂ + 1e-12)                      (SAM's ascent step, Foret et al., ICLR 2021)
    g_sam = ∇_θ L(θ + ε)                               (the reference gradient: a second forward and backward)
    "mix"     (default):  g̃ = (1 − β) · g + β · g_sam
    "project":            g̃ = g − (g·g_sam / ‖g_sam‖²) · g_sam   if g·g_sam < 0,   else g

and the optimiser (CLIP-LoRA's AdamW) steps with g̃. "mix" is the gradient of the gradient-norm penalty
L + λ‖∇L‖ in its finite-difference form (Zhao, Zhang & Hu, "Penalizing Gradient Norm for Efficiently Improving
Generalization in Deep Learning", ICML 2022: ∇(L + λ‖∇L‖) ≈ (1 − λ/ρ) g + (λ/ρ) g_sam, β = λ/ρ): a
"gradient-based regularisation" whose update lies between the task gradient and the flat-region one, which is how
the caption reads. β = 1 is plain SAM; β = 0 is CLIP-LoRA exactly (no second pass is run). "project" is the
alternative reading, ProGrad's surgery with the SAM gradient as the reference direction
(:func:`vlprompt.methods.prograd.project_conflicting`); with a small ρ the two gradients rarely conflict, so it
changes few steps.

Assumptions (the paper's values and forms could not be read):

* the rule (``gradient_rule`` "mix") and its weight ``sam_mix`` β = 0.5;
* ``sam_rho`` ρ = 0.05, SAM's default, with ε normalised over all adapters at once (SAM's global norm);
* the SAM pass sees the same batch (the same augmented images) and draws its own adapter-dropout masks, as a
  second call of the model in SAM's reference code does;
* CLIP-LoRA's preset for everything it has (rank 2, α 1, dropout 0.25, q/k/v of both towers, AdamW lr 2e-4,
  weight decay 1e-2, batch 32, per-iteration cosine, logit scale 100, the dataset's first template).

Implementation: ``loss`` is CLIP-LoRA's; the shared loop calls ``adjust_gradients`` after the backward (and after
unscaling under fp16), which perturbs the adapters in place by ε, takes g_sam with ``torch.autograd.grad`` (the
``.grad`` fields untouched), restores the adapters bit for bit from a copy, and writes g̃ into ``.grad``. A
non-finite g_sam (an fp16 overflow in the SAM pass) leaves g as it is. On CUDA the SAM pass runs under the same
fp16 autocast as the loss but without the loss scaler (a known difference from a scaled second pass).

``tests/test_glad.py``: the rule on a two-parameter quadratic written down by hand; β = 0 is one step of
CLIP-LoRA against its reference fixture; β = 1 is the gradient taken by hand at θ + ε on a second copy of the
method; the adapters are restored exactly; and the regulariser changes the step (the test fails without it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from vlprompt.methods.base import MethodError, register
from vlprompt.methods.clip_lora import CLIPLoRA, CLIPLoRAConfig
from vlprompt.methods.prograd import project_conflicting

RULES = ("mix", "project")


@dataclasses.dataclass(frozen=True)
class GLADConfig(CLIPLoRAConfig):
    gradient_rule: str = "mix"  # assumption: "mix" (1 − β) g + β g_sam, or "project" (g without its conflict)
    sam_mix: float = 0.5  # assumption: β, the weight of the SAM gradient in "mix" (0: CLIP-LoRA; 1: plain SAM)
    sam_rho: float = 0.05  # assumption: ρ, the radius of SAM's ascent step (SAM's default)


def regularized_gradient(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    loss_at: Callable[[], torch.Tensor],
    rho: float,
    mix: float = 0.5,
    rule: str = "mix",
) -> list[torch.Tensor]:
    """g̃ for ``params`` (see the module docstring) from their gradients ``grads`` (g) and ``loss_at``, a closure
    that evaluates the loss at the parameters' current values. The parameters are moved to θ + ε for the call
    and restored exactly (from a copy) after it; ``grads`` is returned unchanged when β = 0 under "mix" (no pass)
    or when g_sam is not finite."""
    if rule not in RULES:
        raise MethodError(f"glad: unknown gradient_rule {rule!r}; use one of {RULES}")
    if rule == "mix" and mix == 0.0:
        return list(grads)
    norm = torch.cat([g.float().flatten() for g in grads]).norm()
    scale = rho / (norm + 1e-12)
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.add_((g.float() * scale).to(p.dtype))
        with torch.enable_grad():
            raw = torch.autograd.grad(loss_at(), list(params), allow_unused=True)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    g_sam = [torch.zeros_like(p) if gs is None else gs for p, gs in zip(params, raw, strict=True)]
    if not all(torch.isfinite(gs).all() for gs in g_sam):
        return list(grads)
    if rule == "mix":
        return [(1.0 - mix) * g + mix * gs.to(g.dtype) for g, gs in zip(grads, g_sam, strict=True)]
    flat, flat_sam = torch.cat([g.flatten() for g in grads]), torch.cat([gs.flatten() for gs in g_sam])
    projected = project_conflicting(flat, flat_sam.to(flat.dtype))
    out, start = [], 0
    for g in grads:
        out.append(projected[start : start + g.numel()].view_as(g))
        start += g.numel()
    return out


@register
class GLAD(CLIPLoRA):
    name = "glad"
    paper = "Peng et al., GLAD: Generalizable Tuning for Vision-Language Models, ICCV Workshops 2025"
    description = (
        "CLIP-LoRA whose gradient is steered by a sharpness-aware (SAM) reference gradient "
        "(a documented reading: no official code)"
    )
    Config = GLADConfig

    def __init__(self, config: GLADConfig, ctx):
        if config.gradient_rule not in RULES:
            raise MethodError(f"glad: unknown gradient_rule {config.gradient_rule!r}; use one of {RULES}")
        if config.sam_rho < 0 or not 0.0 <= config.sam_mix <= 1.0:
            raise MethodError(f"glad: needs sam_rho >= 0 and 0 <= sam_mix <= 1; got {config.sam_rho}, {config.sam_mix}")
        super().__init__(config, ctx)

    def adjust_gradients(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        cfg = self.config
        params = [p for p in self.adapters.parameters() if p.requires_grad and p.grad is not None]
        if not params:
            return

        def loss_at() -> torch.Tensor:
            with torch.autocast(images.device.type, dtype=torch.float16, enabled=images.device.type == "cuda"):
                return self.loss(images, labels)[0].float()

        grads = [p.grad for p in params if p.grad is not None]
        new = regularized_gradient(params, grads, loss_at, cfg.sam_rho, cfg.sam_mix, cfg.gradient_rule)
        for p, g in zip(params, new, strict=True):
            p.grad = g
        self._text_cache = None

    def run_info(self) -> dict:
        cfg = self.config
        return {
            **super().run_info(),
            "gradient_rule": f"{cfg.gradient_rule} (beta {cfg.sam_mix}, rho {cfg.sam_rho}; assumptions)",
        }
