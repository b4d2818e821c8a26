"""DiSa: directional saliency-aware prompt learning (IVLP prompts, PromptSRC's regulation, cross-interactive and
directional terms).

Alipour Talemi et al., "DiSa: Directional Saliency-Aware Prompt Learning for Generalizable Vision-Language
Models", KDD 2025 (arXiv 2505.19373). No official code was found (a paper list marks it "No code available"), so
this is a documented reading of the abstract and the summaries that could be read; every detail they leave open is
a Config field marked "assumption" below, and the catalogue says so.

Prompts as IVLP (:mod:`vlprompt.methods.ivlp`), with PromptSRC's self-regulation as L_SR
(:func:`vlprompt.methods.promptsrc.promptsrc_losses`, its weights, teacher templates and Gaussian prompt
aggregation). Each training image comes as two augmented views (``train_views = 2``): view 1 is PromptSRC's image,
view 2 the masked view. With x̃ = normalize(f(x₁; P)), x̂ = normalize(f₀(x₁)), w̃ the prompted and ŵ the frozen
(template-averaged) class embeddings:

    saliency of patch p of view 2:  a_p = cos(π_p(x₂), ŵ_y)
        (π_p: the frozen last-layer patch token p through ln_post and the projection, deep_prompts.patch_features)
    masked view: the round(r · G) patches of lowest a_p dropped before ln_pre (deep_prompts.kept_patches)
    x̃_m = normalize(f(x₂ ∖ mask; P)),   x̂_m = normalize(f₀(x₂ ∖ mask))
    L_CIR = CE(s · x̃_m · ŵᵀ, y) + CE(s · x̂_m · w̃ᵀ, y)     (prompted image ↔ frozen text, frozen image ↔ prompted text)
    L_DiR = mean_i [1 − cos(x̃_i − x̂_i, μ_{y_i} − x̂_i)]      (the prompted feature moves towards its class prototype)
    L = L_CE + L_SR + μ_CIR · L_CIR + λ · L_DiR

with μ_c the class prototypes: the normalised mean of the frozen features of class c's training images (the
feature bank's un-augmented ``train_plain`` split when the run has it; otherwise the running mean of the frozen
features of view 1 over the batches seen so far, the current one included, kept with the loop state so a resumed
run continues it).

Assumptions (the paper's values and forms could not be read):

* ``mask_ratio`` r = 0.5, the saliency signal a_p (the frozen text embedding of the true class against projected
  patch tokens), and that the dropped patches are the least salient ones;
* the masked view is the second, independently augmented view of the two-view loop;
* L_CIR's form (two cross-entropies, both on the masked view) and its weight ``cir_weight`` μ_CIR = 1;
* L_DiR's form (the cosine between the prompted feature's displacement from the frozen one and the direction to
  the class prototype) and its weight ``dir_weight`` λ = 1;
* the prototypes' source (above), and PromptSRC's preset for everything PromptSRC has (4 + 4 tokens, depth 9,
  20 epochs, lr 0.0025, batch 4, λ_t 25, λ_i 10, λ_z 1, GPA).

Reductions, checked exactly in ``tests/test_disa.py``: with ``mask_ratio`` 0 the masked view is view 2 unmasked;
with, in addition, ``dir_weight`` 0 and ``cir_weight`` 0 the loss is PromptSRC's on view 1, which is IVLP's
cross-entropy plus PromptSRC's terms. L_CIR and L_DiR are also checked by hand on a toy.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlprompt.clip import deep_prompts
from vlprompt.methods.base import MethodContext, MethodError, normalize, register
from vlprompt.methods.promptsrc import PromptSRC, PromptSRCConfig


@dataclasses.dataclass(frozen=True)
class DiSaConfig(PromptSRCConfig):
    mask_ratio: float = 0.5  # assumption: fraction of the patches dropped from the masked view (least salient)
    cir_weight: float = 1.0  # assumption: μ_CIR, the weight of the cross-interactive term
    dir_weight: float = 1.0  # assumption: λ, the weight of the directional term


def disa_terms(
    labels: torch.Tensor,
    scale: float,
    masked: torch.Tensor,
    frozen_masked: torch.Tensor,
    text: torch.Tensor,
    frozen_text: torch.Tensor,
    image: torch.Tensor,
    frozen_image: torch.Tensor,
    prototypes: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """L_CIR and L_DiR (see the module docstring) from normalised features: ``masked``/``frozen_masked`` (B, D) the
    prompted/frozen masked view, ``text``/``frozen_text`` (C, D), ``image``/``frozen_image`` (B, D) view 1,
    ``prototypes`` (C, D)."""
    cir = F.cross_entropy(scale * masked @ frozen_text.T, labels) + F.cross_entropy(
        scale * frozen_masked @ text.T, labels
    )
    moved, towards = image - frozen_image, prototypes[labels] - frozen_image
    directional = (1.0 - F.cosine_similarity(moved, towards, dim=1, eps=1e-8)).mean()
    return {"cir": cir, "dir": directional}


def kept_by_saliency(saliency: torch.Tensor, ratio: float) -> torch.Tensor | None:
    """(B, k) indices of the patches kept (ascending), the round(ratio · G) least salient of each row dropped; None
    when nothing is dropped."""
    grid = saliency.shape[1]
    dropped = round(ratio * grid)
    if dropped == 0:
        return None
    return saliency.topk(grid - dropped, dim=1).indices.sort(dim=1).values


@register
class DiSa(PromptSRC):
    name = "disa"
    paper = (
        "Alipour Talemi et al., DiSa: Directional Saliency-Aware Prompt Learning for Generalizable Vision-Language "
        "Models, KDD 2025"
    )
    description = (
        "IVLP prompts with PromptSRC's regulation, cross-interactive terms on a saliency-masked second view and "
        "a directional term towards class prototypes (a documented reading; no official code)"
    )
    Config = DiSaConfig
    train_views = 2
    prototype_sum: torch.Tensor  # (C, D) running sums of the frozen view-1 features per class (buffers)
    prototype_count: torch.Tensor  # (C,)

    def __init__(self, config: DiSaConfig, ctx: MethodContext):
        if not 0.0 <= config.mask_ratio < 1.0:
            raise MethodError(f"disa: mask_ratio must be in [0, 1), got {config.mask_ratio}")
        super().__init__(config, ctx)
        n_cls, dim = len(ctx.classnames), self.frozen.backbone.embed_dim
        plain = ctx.split("train_plain")
        device = self.fixed_text.device
        self.register_buffer("prototype_sum", torch.zeros(n_cls, dim, device=device), persistent=False)
        self.register_buffer("prototype_count", torch.zeros(n_cls, device=device), persistent=False)
        self.fixed_prototypes = plain is not None
        if plain is not None:  # the bank's un-augmented training features: fixed prototypes
            feats, labels = plain
            self.prototype_sum.index_add_(0, labels.to(device), normalize(feats.to(device)))
            self.prototype_count.index_add_(0, labels.to(device), torch.ones(len(labels), device=device))

    def prototypes(self) -> torch.Tensor:
        return normalize(self.prototype_sum / self.prototype_count.clamp(min=1).unsqueeze(1))

    def masked_view(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """The kept patches of each image (None: all), by the frozen CLIP's saliency towards its class."""
        if self.config.mask_ratio == 0:
            return None
        with torch.no_grad():
            patches = normalize(deep_prompts.patch_features(self.frozen.model, images))  # (B, G, D)
            saliency = (patches * self.teacher_text()[labels].unsqueeze(1)).sum(-1)
        return kept_by_saliency(saliency, self.config.mask_ratio)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if images.dim() != 5 or images.shape[1] != 2:
            raise MethodError(f"disa trains on two views per image, (B, 2, 3, H, W); got {tuple(images.shape)}")
        view1, view2 = images[:, 0], images[:, 1]
        parts, features = self.regulated(view1, labels)  # CE + L_SR on view 1
        text, image, frozen_image = features["text"], features["image"], features["frozen_image"]
        c = self.config
        with torch.no_grad():
            if not self.fixed_prototypes and self.training:
                self.prototype_sum.index_add_(0, labels, frozen_image)
                self.prototype_count.index_add_(0, labels, torch.ones_like(labels, dtype=frozen_image.dtype))
            keep = self.masked_view(view2, labels)
            with deep_prompts.kept_patches(self.frozen.model, keep):
                frozen_masked = normalize(self.frozen.model.encode_image(view2))
        with deep_prompts.kept_patches(self.frozen.model, keep):
            masked = self.image_features(view2)
        terms = disa_terms(
            labels,
            self.logit_scale,
            masked,
            frozen_masked,
            text,
            self.teacher_text(),
            image,
            frozen_image,
            self.prototypes(),
        )
        total = parts["total"] + c.cir_weight * terms["cir"] + c.dir_weight * terms["dir"]
        return total, {k: v.item() for k, v in {**parts, **terms}.items() if k != "total"}

    def loop_state(self) -> dict:
        return {**super().loop_state(), "prototype_sum": self.prototype_sum, "prototype_count": self.prototype_count}

    def load_loop_state(self, state: dict) -> None:
        super().load_loop_state(state)
        self.prototype_sum.copy_(state["prototype_sum"])
        self.prototype_count.copy_(state["prototype_count"])

    def run_info(self) -> dict:
        return {
            **super().run_info(),
            "prototypes": "train_plain features" if self.fixed_prototypes else "running mean of the frozen view-1",
        }
