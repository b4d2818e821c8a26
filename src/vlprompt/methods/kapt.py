"""KAPT: knowledge-aware prompt tuning (Kan et al., "Knowledge-Aware Prompt Tuning for Generalizable Vision-Language
Models", ICCV 2023, arXiv 2308.11186), our reading on the cached feature bank.

No official code exists (the paper links none; lists of prompt-learning code mark it "No Code") and the paper's
method section could not be read here, only its abstract: the discrete prompt's keyword extraction, how the two
prompts combine and the adaptation head's form are assumptions, each a named ``Config`` option. The abstract:
two complementary knowledge-aware prompts for the text encoder, a discrete prompt carrying the key information of
a category's descriptions and a learned continuous prompt capturing the overall context, and an adaptation head
on the visual encoder that aggregates salient attentive visual cues. **Unverified**: if the paper's head attends
over the image's patch tokens, it needs the image encoder in the loop; here it acts on the final image feature.

With the class descriptions of the description store (``vlprompt.data.descriptions``, CuPL's format):

    keywords(c) = the k most frequent words of c's descriptions, stop words left out (ties: first seen)
    discrete:   d_c = normalize(E_text("<template(c) without its final '.'>, kw_1, …, kw_k."))   (frozen)
    continuous: w_c = normalize(g([SOS][v_1 … v_M][CLASS_c][.][EOS]))                          (CoOp's)
    head:       x̃ = normalize(x̂ + A(x̂)),  A = Linear(D, D/r) → ReLU → Linear(D/r, D), last layer zero at init
    logits_c(x) = s · x̃ · (β d_c + (1 − β) w_c)ᵀ,   L = CE(logits, y)

v and A train (CoOp's base-to-new preset: 4 tokens from "a photo of a", SGD lr 0.002); new classes get their
own discrete prompts from their descriptions and the trained context with their names.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import torch
import torch.nn.functional as F

from vlprompt.clip.backbone import encode_prompts
from vlprompt.clip.prompting import prompt_name
from vlprompt.data.descriptions import descriptions_for
from vlprompt.methods.base import MethodContext, normalize, register
from vlprompt.methods.coop import CoOp, CoOpConfig
from vlprompt.methods.restore import ResidualAdapter

STOP_WORDS = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being it its this that these "
    "those as has have had can may might often usually typically which who whose what when where how than then "
    "there their they them some such also very more most into out up down over under about like other its one "
    "two three each any all not no you your photo image picture".split()
)


@dataclasses.dataclass(frozen=True)
class KAPTConfig(CoOpConfig):
    n_keywords: int = 3  # k keywords per class in the discrete prompt (assumption)
    discrete_weight: float = 0.5  # β, weight of the discrete prompt's classifier (assumption)
    head_reduction: int = 4  # adaptation head bottleneck D -> D / r (assumption)


def keywords(sentences: list[str], k: int) -> list[str]:
    """The k most frequent words of ``sentences`` (lower-cased, stop words out), ties broken by first appearance."""
    words = [w for s in sentences for w in re.findall(r"[a-z][a-z\-]*", s.lower()) if w not in STOP_WORDS]
    counts = Counter(words)
    first: dict[str, int] = {}
    for i, w in enumerate(words):
        first.setdefault(w, i)
    return sorted(counts, key=lambda w: (-counts[w], first[w]))[:k]


def discrete_prompt(template: str, classname: str, words: list[str]) -> str:
    """The template filled with the class, then the keywords: "a photo of a red circle, red, circle."."""
    text = template.format(prompt_name(classname)).rstrip()
    text = text[:-1] if text.endswith(".") else text
    return ", ".join([text, *words]) + "."


@register
class KAPT(CoOp):
    name = "kapt"
    paper = "Kan et al., Knowledge-Aware Prompt Tuning for Generalizable Vision-Language Models, ICCV 2023"
    description = "CoOp + a frozen discrete prompt of description keywords + an image adaptation head (reading)"
    Config = KAPTConfig

    discrete: torch.Tensor  # (C, D) normalised features of the discrete knowledge prompts

    def __init__(self, config: KAPTConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if not 0 <= config.discrete_weight <= 1:
            raise ValueError(f"kapt: discrete_weight must lie in [0, 1], got {config.discrete_weight}")
        self.backbone, self.template = ctx.backbone, ctx.template
        self.descriptions, self.dataset = ctx.descriptions, ctx.dataset
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            self.head = ResidualAdapter(ctx.backbone.embed_dim, config.head_reduction).to(ctx.device)
        self.set_discrete(ctx.classnames)

    def set_classes(self, classnames: list[str]) -> None:
        super().set_classes(classnames)
        self.set_discrete(classnames)

    def set_discrete(self, classnames: list[str]) -> None:
        descs = descriptions_for(self.descriptions, self.dataset, classnames)
        self.discrete_texts = [
            discrete_prompt(self.template, c, keywords(descs[c], self.config.n_keywords)) for c in classnames
        ]
        self.register_buffer("discrete", encode_prompts(self.backbone, self.discrete_texts), persistent=False)

    def text_features(self) -> torch.Tensor:
        """β d_c + (1 − β) w_c, (C, D) (not renormalised: the logits are the β-weighted sum of both prompts')."""
        beta = self.config.discrete_weight
        return beta * self.discrete + (1 - beta) * super().text_features()

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * normalize(self.head(normalize(image_features))) @ self.text_features().T

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss = F.cross_entropy(self(image_features), labels)
        return loss, {"ce": loss.item()}
