"""TFUP: training-free unsupervised prompts (Long et al., "Training-Free Unsupervised Prompt for Vision-Language
Models", arXiv 2404.16339).

Reference implementation read (not copied): wlb12345/TFUP at commit d95d4d3, main.py (``TFUP``), utils.py
(``refine_few_shots_without_label``, ``get_sim_based_kl``, ``get_clip_weights``) and configs/*.yaml (alpha 0.3,
beta 1, cache_proportion 0.3). TFUP-T, its trained variant, is not built here.

The method sees the target's images without labels: the protocol option ``unlabelled`` of the config exposes the
features of every image of one split (``train``: the training split, the reference on DomainNet; ``test``: the test
images themselves, transductive, the reference on Office-Home), whatever their class and without their labels
(``MethodContext.unlabelled``; tests/test_methods_wave3.py shows no label is read).

Text classifier: per class the mean of the *unnormalised* text features of its descriptions (the reference's GPT-3.5
sentences in CuPL's format; here the description store), normalised: W (C, D). With U (N, D) the unlabelled
features and P = softmax(10 · Û Wᵀ) their pseudo-label distributions:

- cache (``refine_few_shots_without_label``): K = clip(⌊0.3 N / C⌋, 9, 16) entries per class; for class i the 2K
  images with the highest P[:, i] are candidates, and the K whose distributions are most typical of them, the
  smallest Σ_k KL(P_j ‖ P_k) over the candidates k, enter the cache as keys K̂ (normalised features) with the
  pseudo-label i as value (one-hot V);
- prediction (``TFUP``, ``get_sim_based_kl``): for a test feature f̂, with p = softmax(10 f̂ Wᵀ) and
  q_j = softmax(10 k̂_j Wᵀ), the semantic similarity σ_j = 2 (1 − (KL(p ‖ q_j) − min) / (max − min)) over the cache
  (the reference standardises KL first, which a min-max rescaling cancels), and

      logits(x) = 100 · f̂ Wᵀ + α · exp(−β (1 − σ ⊙ f̂ K̂ᵀ)) V,      α = 0.3, β = 1.

New classes (``set_classes``): the cache is rebuilt from the same unlabelled images with the new class names.
Deviation: the reference computes in fp16 on a GPU; here fp32.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlprompt.clip.backbone import PromptedTextEncoder
from vlprompt.clip.prompting import text_classifier
from vlprompt.data.descriptions import descriptions_for, source_of
from vlprompt.methods.base import Method, MethodContext, MethodError, normalize, register

TEXTS = ("descriptions", "template")


@dataclasses.dataclass(frozen=True)
class TFUPConfig:
    alpha: float = 0.3  # weight of the cache logits
    beta: float = 1.0  # sharpness of the affinities
    cache_proportion: float = 0.3  # K = clip(cache_proportion · N / C, min_cache_shots, max_cache_shots)
    min_cache_shots: int = 9
    max_cache_shots: int = 16
    select_scale: float = 10.0  # temperature of the pseudo-label distributions (the reference's 10)
    text: str = "descriptions"  # descriptions (the reference) | template (its VisDA setting)
    template: str | None = None  # text="template": a template or table (None: the dataset's)
    logit_scale: float | None = 100.0  # the reference hard-codes 100; None: the model's


def typicality(p: torch.Tensor) -> torch.Tensor:
    """Σ_k KL(p_j ‖ p_k) over the rows k of p (m, C), for each row j: the reference's candidate score."""
    logp = p.clamp_min(1e-12).log()
    return len(p) * (p * logp).sum(-1) - p @ logp.sum(0)


def semantic_similarity(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """σ (B, M) = 2 (1 − min-max rescaled KL(p_b ‖ q_m) over m); p (B, C), q (M, C) distributions."""
    logp, logq = p.clamp_min(1e-12).log(), q.clamp_min(1e-12).log()
    kl = (p * logp).sum(-1, keepdim=True) - p @ logq.T  # (B, M)
    low, high = kl.min(-1, keepdim=True).values, kl.max(-1, keepdim=True).values
    return 2 * (1 - (kl - low) / (high - low).clamp_min(1e-12))


@register
class TFUP(Method):
    name = "tfup"
    family = "training-free"
    paper = "Long et al., Training-Free Unsupervised Prompt for Vision-Language Models, arXiv 2404.16339"
    description = "pseudo-labelled feature cache over the target's unlabelled images, similarity-refined predictions"
    Config = TFUPConfig
    needs_training = False
    reads_unlabelled = True

    unlabelled: torch.Tensor  # (N, D) the target's unlabelled image features
    weights: torch.Tensor  # (C, D) text classifier
    cache_keys: torch.Tensor  # (M, D) normalised cache keys
    cache_values: torch.Tensor  # (M, C) one-hot cache values

    def __init__(self, config: TFUPConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if config.text not in TEXTS:
            raise MethodError(f"tfup: text must be one of {TEXTS}, got {config.text!r}")
        if ctx.unlabelled is None:
            raise MethodError(
                "tfup needs the target's unlabelled images: set the config's `unlabelled` to train "
                "or test (MethodContext.unlabelled)"
            )
        if config.logit_scale is not None:
            self.logit_scale = config.logit_scale
        self.backbone, self.dataset, self.descriptions = ctx.backbone, ctx.dataset, ctx.descriptions
        self.templates = ctx.templates(config.template)
        self.pool = getattr(ctx.unlabelled, "split", "given")
        self.register_buffer("unlabelled", ctx.unlabelled().float().to(ctx.device), persistent=False)  # (N, D)
        if not len(self.unlabelled):
            raise MethodError("tfup: the unlabelled split holds no image")
        self.set_classes(ctx.classnames)

    def text_weights(self, classnames: list[str]) -> torch.Tensor:
        """W (C, D): the normalised mean of the unnormalised description features (or the template's classifier)."""
        if self.config.text == "template":
            return text_classifier(self.backbone, self.templates, classnames)
        descs = descriptions_for(self.descriptions, self.dataset, classnames)
        encoder = PromptedTextEncoder(self.backbone.model)
        device = next(self.backbone.model.parameters()).device
        rows = []
        with torch.no_grad():
            for c in classnames:
                rows.append(encoder.encode(self.backbone.tokenizer(descs[c]).to(device)).float().mean(0))
        return F.normalize(torch.stack(rows), dim=-1)

    def set_classes(self, classnames: list[str]) -> None:
        """Text classifier and cache for ``classnames``, the cache built from the unlabelled images."""
        c = self.config
        w = self.text_weights(classnames).to(self.unlabelled.device)  # (C, D)
        u = normalize(self.unlabelled)  # (N, D)
        p = F.softmax(c.select_scale * u @ w.T, dim=-1)  # (N, C)
        shots = min(c.max_cache_shots, max(c.min_cache_shots, int(len(u) * c.cache_proportion / len(classnames))))
        keys, values = [], []
        for i in range(len(classnames)):
            candidates = p[:, i].argsort(descending=True, stable=True)[: 2 * shots]
            keep = candidates[typicality(p[candidates]).argsort(stable=True)[:shots]]
            keys.append(u[keep])
            values += [i] * len(keep)
        self.register_buffer("weights", w, persistent=False)
        self.register_buffer("cache_keys", torch.cat(keys), persistent=False)  # (M, D) normalised
        self.register_buffer(
            "cache_values", F.one_hot(torch.tensor(values, device=w.device), len(classnames)).float(), persistent=False
        )  # (M, C)
        self.cache_shots = shots

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        c = self.config
        f = normalize(image_features)  # (B, D)
        sims = f @ self.weights.T  # (B, C)
        p = F.softmax(c.select_scale * sims, dim=-1)
        q = F.softmax(c.select_scale * self.cache_keys @ self.weights.T, dim=-1)  # (M, C)
        affinity = semantic_similarity(p, q) * (f @ self.cache_keys.T)  # (B, M)
        cache = torch.exp(-c.beta * (1 - affinity)) @ self.cache_values
        return self.logit_scale * sims + c.alpha * cache

    def run_info(self) -> dict:
        texts = source_of(self.descriptions, self.dataset) if self.config.text == "descriptions" else "template"
        return {
            "unlabelled": self.pool,
            "unlabelled_images": len(self.unlabelled),
            "cache_shots": self.cache_shots,
            "text": texts,
        }
