"""DVMI: dual-view mutual information prompt tuning, our reading of Q. Zhang et al., "Generalizable Prompt
Tuning for Vision-Language Models" (arXiv 2410.03189, 2024). CoOp plus an InfoNCE term and a class-wise
visual augmentation.

No public code exists and the paper's estimator and weights are not known here (see the anchors notes):
what follows is a faithful, documented reading of its abstract, and every choice is a named ``Config``
option. The learnable soft prompt and the hand-crafted prompt are two views of the text modality; their
mutual information is maximised to join task-specific and general semantics, and a class-wise augmentation
of the visual modality makes the prompts robust to unseen classes.

Text views, for the C training classes: w_c = normalize(g(t_c)) (soft prompt, CoOp) and h_c = normalize(
E_text(template.format(classname_c))) (hand-crafted; ``hand_crafted="template"`` the dataset's template,
``"ensemble"`` the mean over the prompt ensemble of ``zeroshot_ensemble``), computed once. With τ the
temperature (``mi_temperature``; default CLIP's, τ = 1/s) and the same class as the only positive:

    L_nce(W, H) = −(1/C) Σ_c log( exp(w_c·h_c/τ) / Σ_j exp(w_c·h_j/τ) )
    L_mi = ½ (L_nce(W, H) + L_nce(H, W))      (symmetric; ``mi_symmetric=False``: L_nce(W, H) only)
    I(w; h) ≥ log C − L_mi                    (the InfoNCE lower bound maximised)

Class-wise visual augmentation (``augment``): k = ⌈``augment_ratio`` · B⌉ synthetic features per batch of
B, one per real feature x_i (label y_i) when k = B, else from k real features drawn at random; each is of
class y_i and built from the normalised cached training features of that class (all views of every
few-shot image):

    "mix":        z = λ x̂_i + (1 − λ) x̂_j,   x̂_j a random feature of class y_i, λ ~ Beta(a, a), a = ``mix_alpha``
    "mean_noise": z = μ_{y_i} + σ ε,  μ_c = mean of the class's normalised features, ε ~ N(0, I/D), σ = ``noise_std``
    "none":       no synthetic features

and the synthetic features join the batch with their class labels. The loss is

    L = CE(s · normalize([X; Z]) · Wᵀ, [y; y_Z]) + λ_mi · L_mi,    λ_mi = ``mi_weight``

Prediction is CoOp's (soft prompts only). Defaults: CoOp's base-to-new preset (4 tokens from "a photo of a",
batch 32, SGD lr 0.002, 200 epochs), λ_mi = 1, CLIP's temperature, symmetric, "mix" with a = 1 (uniform λ)
and ratio 1. The random draws use torch's global generator, which the shared loop seeds per epoch, so
runs are reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from vlprompt.methods.base import MethodContext, normalize, register
from vlprompt.methods.coop import CoOp, CoOpConfig
from vlprompt.methods.zeroshot_ensemble import resolve_templates
from vlprompt.prompting import text_classifier

AUGMENTS = ("none", "mix", "mean_noise")


@dataclasses.dataclass(frozen=True)
class DVMIConfig(CoOpConfig):
    mi_weight: float = 1.0  # λ_mi, weight of the InfoNCE term
    mi_temperature: float | None = None  # τ; None: CLIP's (1 / logit scale)
    mi_symmetric: bool = True  # average of soft->hand-crafted and hand-crafted->soft InfoNCE
    hand_crafted: str = "template"  # "template" (dataset's) or "ensemble" (zeroshot_ensemble's "auto" list)
    augment: str = "mix"  # none | mix | mean_noise
    augment_ratio: float = 1.0  # synthetic features per real feature in a batch
    mix_alpha: float = 1.0  # Beta(a, a) for the mixing weight ("mix")
    noise_std: float = 0.1  # σ, norm of the noise added to the class mean ("mean_noise")


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, symmetric: bool = True) -> torch.Tensor:
    """InfoNCE between row-aligned (C, D) views; row c of ``a`` and ``b`` is the positive pair."""
    logits = normalize(a) @ normalize(b).T / temperature  # (C, C)
    target = torch.arange(len(a), device=a.device)
    loss = F.cross_entropy(logits, target)
    return 0.5 * (loss + F.cross_entropy(logits.T, target)) if symmetric else loss


def mix_same_class(x_hat: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """λ x̂ + (1 − λ) x̂_partner, row-wise; (B, D), (B, D), (B,)."""
    return lam[:, None] * x_hat + (1 - lam[:, None]) * partner


@register
class DVMI(CoOp):
    name = "dvmi"
    paper = "Zhang et al., Generalizable Prompt Tuning for Vision-Language Models, arXiv 2410.03189, 2024"
    description = "dual-view MI: InfoNCE(soft prompt, hand-crafted prompt) + class-wise feature augmentation"
    Config = DVMIConfig

    def __init__(self, config: DVMIConfig, ctx: MethodContext):
        if config.augment not in AUGMENTS:
            raise ValueError(f"dvmi: augment must be one of {AUGMENTS}, got {config.augment!r}")
        if config.hand_crafted not in ("template", "ensemble"):
            raise ValueError(f"dvmi: hand_crafted must be 'template' or 'ensemble', got {config.hand_crafted!r}")
        super().__init__(config, ctx)
        templates = ([ctx.template] if config.hand_crafted == "template"
                     else resolve_templates("auto", ctx.backbone, ctx.dataset))
        views = text_classifier(ctx.backbone, templates, ctx.classnames)
        self.register_buffer("hand_crafted", views, persistent=False)  # (C_train, D)
        self.temperature = config.mi_temperature or 1.0 / self.logit_scale
        if ctx.train_features is not None and config.augment != "none":
            pool = normalize(ctx.train_features.flatten(0, 1))  # (V·N, D)
            labels = ctx.train_labels.repeat(ctx.train_features.shape[0])  # (V·N,)
            n_cls = len(ctx.classnames)
            means = normalize(torch.zeros(n_cls, pool.shape[1]).index_add_(0, labels, pool))
            order = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels, minlength=n_cls)
            self.register_buffer("pool", pool[order], persistent=False)  # grouped by class
            self.register_buffer("pool_start", torch.cumsum(counts, 0) - counts, persistent=False)
            self.register_buffer("pool_count", counts, persistent=False)
            self.register_buffer("class_means", means, persistent=False)

    def synthesize(self, x_hat: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-wise synthetic features (the configured augmentation) for part of the batch."""
        cfg = self.config
        b = len(labels)
        k = math.ceil(cfg.augment_ratio * b)
        if cfg.augment == "none" or k == 0 or not hasattr(self, "pool"):
            return x_hat[:0], labels[:0]
        # ratio 1: one synthetic feature per real one; otherwise sources drawn at random from the batch
        idx = torch.arange(b, device=labels.device) if k == b else torch.randint(b, (k,), device=labels.device)
        y = labels[idx]
        if cfg.augment == "mix":
            offset = (torch.rand(k, device=y.device) * self.pool_count[y]).long()
            partner = self.pool[self.pool_start[y] + offset]
            lam = torch.distributions.Beta(cfg.mix_alpha, cfg.mix_alpha).sample((k,)).to(x_hat)
            return mix_same_class(x_hat[idx], partner, lam), y
        noise = torch.randn(k, x_hat.shape[1], device=x_hat.device) / x_hat.shape[1] ** 0.5
        return self.class_means[y] + cfg.noise_std * noise, y

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        text = self.text_features()  # (C, D)
        x_hat = normalize(image_features)
        z, y_z = self.synthesize(x_hat, labels)
        feats, targets = torch.cat([x_hat, z]), torch.cat([labels, y_z])
        ce = F.cross_entropy(self.logit_scale * normalize(feats) @ text.T, targets)
        mi = info_nce(text, self.hand_crafted, self.temperature, self.config.mi_symmetric)
        return ce + self.config.mi_weight * mi, {"ce": ce.item(), "mi_nce": mi.item(), "n_synthetic": len(y_z)}
