"""CoPrompt: MaPLe's coupled prompts with adapters, kept consistent with the frozen CLIP on two augmented views.

Roy & Etemad, "Consistency-guided Prompt Learning for Vision-Language Models", ICLR 2024. Reference:
ShuvenduRoy/CoPrompt at a2a6c12 (``trainers/coprompt.py``: ``MultiModalPromptLearner``, ``Adapter``, ``CustomCLIP``,
``gpt_clip_classifier``; ``configs/trainers/coprompt.yaml``; read, not copied).

Prompts as MaPLe (:mod:`vlprompt.methods.maple`: text context c from "a photo of a", deeper text prompts T_j,
vision prompts F_j(T_j)), then two residual bottleneck adapters A(z) = ReLU(ReLU(z W_1ᵀ) W_2ᵀ) (D → D/4 → D, no
bias) mixed into the final features:

    t_c = normalize(0.2 · A_t(g(prompt_c)) + 0.8 · g(prompt_c))
    x̂   = normalize(0.1 · A_x(f(x₁; P)) + 0.9 · f(x₁; P))
    logits = s · x̂ · tᵀ
    L = CE(logits, y) + W · [(1 − mean_c cos(t_c, d_{k,c})) + (1 − mean_i cos(x̂_i, normalize(f₀(x₂)_i)))]

with x₁, x₂ two independently augmented views of each training image (``train_views = 2``; view 2 goes through the
frozen CLIP f₀ without prompts), d_{k,c} the frozen CLIP embedding (normalised) of the k-th description of class c,
k drawn once per step, W = 1. Trained: c, T_j, F_j and both adapters. Preset (``configs/trainers/coprompt.yaml``):
2 tokens, depth 9, SGD lr 0.0035, batch 4, 8 epochs, cosine with one constant warm-up epoch at 1e-5, RandAugment
(2 operations, magnitude 10) on a resize to the input size, no crop or flip.

Descriptions: the reference reads ``gpt_file/<dataset>_prompt.json`` (its own LLM sentences, the same number for
every class, stacked into a (K, C, D) tensor). Here they come from the description store
(:mod:`vlprompt.data.descriptions`; the pocket rule on the pocket world); when classes have different numbers of
sentences the first K of each are used, K the smallest count, and the run records it.

Known differences (documented readings):

* k is drawn with ``torch.randint`` from the epoch-seeded generator (the reference: Python's ``random.randint``),
  so a resumed run draws the same k as an uninterrupted one; the distribution is the same.
* torchvision's RandAugment stands in for Dassl's (same n and m; the list of operations differs), see
  :func:`vlprompt.clip.features.randaugment_transform`.
* The reference's prompt learner also encodes the hand-crafted prompts of every class with its custom template
  (``self.text_features``) and never uses them; nothing here computes them.

``tests/test_coprompt.py`` checks features, logits, each loss term, the gradient and one SGD step against the
reference's own ``CustomCLIP`` and trainer on the tiny CLIP (both views fed explicitly, k fixed).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip import deep_prompts
from vlprompt.clip.backbone import encode_prompts
from vlprompt.data.descriptions import descriptions_for, source_of
from vlprompt.methods.base import MethodContext, MethodError, normalize, register
from vlprompt.methods.maple import MaPLe, MaPLeConfig


@dataclasses.dataclass(frozen=True)
class CoPromptConfig(MaPLeConfig):
    epochs: int = 8
    distill_weight: float = 1.0  # W, the weight of both consistency terms
    distill: str = "cosine"  # cosine | mse (the reference's DISTILL)
    image_adapter_ratio: float = 0.1
    text_adapter_ratio: float = 0.2
    adapter_reduction: int = 4  # bottleneck width D / reduction
    augmentation: str = "randaugment"  # the training views' augmentation (see image_runs.training_transform)


def bottleneck(width: int, reduction: int, gen: torch.Generator) -> nn.Sequential:
    """The reference's Adapter: Linear(D, D/r) → ReLU → Linear(D/r, D) → ReLU, no biases, PyTorch's default
    initialisation drawn from ``gen``."""
    down, up = nn.Linear(width, width // reduction, bias=False), nn.Linear(width // reduction, width, bias=False)
    with torch.no_grad():
        for layer in (down, up):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
    return nn.Sequential(down, nn.ReLU(), up, nn.ReLU())


@register
class CoPrompt(MaPLe):
    name = "coprompt"
    paper = "Roy & Etemad, Consistency-guided Prompt Learning for Vision-Language Models, ICLR 2024"
    description = "MaPLe prompts with adapters; consistency with the frozen CLIP on a second view and on descriptions"
    Config = CoPromptConfig
    train_views = 2
    description_features: torch.Tensor  # (K, C, D) frozen features of the k-th description of each class (a buffer)

    def build_prompts(self, config: MaPLeConfig, ctx: MethodContext, gen: torch.Generator) -> None:
        assert isinstance(config, CoPromptConfig)
        super().build_prompts(config, ctx, gen)
        if self.prompt_learner is None:
            raise MethodError("coprompt needs depth >= 1 and n_ctx >= 1 (the reference asserts PROMPT_DEPTH >= 1)")
        width = self.frozen.backbone.embed_dim
        device = next(self.frozen.model.parameters()).device
        self.adapter_image = bottleneck(width, config.adapter_reduction, gen).to(device)
        self.adapter_text = bottleneck(width, config.adapter_reduction, gen).to(device)

    def __init__(self, config: CoPromptConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if config.distill not in ("cosine", "mse"):
            raise MethodError(f"coprompt: distill must be cosine or mse, got {config.distill!r}")
        given = descriptions_for(ctx.descriptions, ctx.dataset, ctx.classnames)
        sentences = [given[c] for c in ctx.classnames]
        self.per_class = min(len(s) for s in sentences)
        self.truncated = any(len(s) != self.per_class for s in sentences)
        self.description_source = source_of(ctx.descriptions, ctx.dataset)
        flat = [s[k] for k in range(self.per_class) for s in sentences]  # k-major: (K · C) prompts
        feats = encode_prompts(self.frozen.backbone, flat).view(self.per_class, len(sentences), -1)
        self.register_buffer("description_features", feats, persistent=False)  # (K, C, D), each normalised

    # -- the model ----------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        pl = self.prompt_learner
        assert pl is not None  # build_prompts refuses depth 0
        t = deep_prompts.encode_text(pl.encoder, pl.prompts(), pl.eot, self.text_prompts()[1:])
        r = self.config.text_adapter_ratio
        return normalize(r * self.adapter_text(t) + (1 - r) * t)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = deep_prompts.encode_image(self.frozen.model, images, self.vision_prompts())
        r = self.config.image_adapter_ratio
        return normalize(r * self.adapter_image(x) + (1 - r) * x)

    def draw_description(self) -> int:
        """k, the description of every class that the text consistency term uses at this step."""
        return int(torch.randint(self.per_class, (1,)).item())

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        if images.dim() != 5 or images.shape[1] != 2:
            raise MethodError(f"coprompt trains on two views per image, (B, 2, 3, H, W); got {tuple(images.shape)}")
        view1, view2 = images[:, 0], images[:, 1]
        x, t = self.image_features(view1), self.text_features()
        ce = F.cross_entropy(self.logit_scale * x @ t.T, labels)
        d = self.description_features[self.draw_description()]  # (C, D)
        with torch.no_grad():
            frozen = normalize(self.frozen.model.encode_image(view2))
        if self.config.distill == "cosine":
            text = 1.0 - F.cosine_similarity(t, d, dim=1, eps=1e-7).mean()
            image = 1.0 - F.cosine_similarity(x, frozen, dim=1, eps=1e-7).mean()
        else:
            text, image = F.mse_loss(t, d), F.mse_loss(x, frozen)
        loss = ce + self.config.distill_weight * (text + image)
        return loss, {"ce": ce.item(), "text": text.item(), "image": image.item()}

    def run_info(self) -> dict:
        return {
            "descriptions": self.description_source,
            "descriptions_per_class": self.per_class,
            "descriptions_truncated": self.truncated,
        }
