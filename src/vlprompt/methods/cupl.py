"""CuPL: customized prompts via language models (Pratt et al., "What does a platypus look like? Generating customized
prompts for zero-shot image classification", ICCV 2023, arXiv 2209.03320).

Reference implementation read (not copied): sarahpratt/CuPL at commit 719619c, classify_imagenet.py
(``zeroshot_classifier_gpt``): the class embedding is the normalised mean of the normalised text features of the
class's sentences, the sentences written by a language model (GPT-3) in answer to questions such as "What does a
{} look like?"; ``use_both`` puts the hand-crafted templates' sentences in the same pool ("CuPL + e" in the paper).
Sentences longer than the text encoder's context are truncated (``clip.tokenize(..., truncate=True)``), as
open_clip's tokenizer does.

    w_c = normalize( (1/|S_c|) Σ_{s ∈ S_c} normalize(E_text(s)) )
    S_c = D_c (cupl)   or   S_c = {t.format(class_c) : t ∈ T} ∪ D_c (cupl_ensemble: templates and descriptions pooled)
    logits(x) = s · normalize(f(x)) · w_cᵀ

D_c comes from the description store's source ``descriptions`` (vlprompt.data.descriptions; preset ``cupl``: CuPL's
own files, on ImageNet ``imagenet_prompts/CuPL_image_prompts.json``, the file classify_imagenet.py reads): the
published files where they are saved (none is shipped: no licence), the pocket world's generated sentences (a
documented rule standing in for the language model) on the pocket datasets. T is the template set of
zero-shot CLIP's ensemble (``templates="auto"``: CLIP's set for the dataset, the pocket set on the pocket CLIP); the
reference uses CLIP's 80 ImageNet templates on ImageNet. Each run records the source, the file it read and its
SHA-256.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlprompt.clip.backbone import encode_prompts
from vlprompt.clip.prompting import prompt_name
from vlprompt.data.descriptions import descriptions_for, source_record
from vlprompt.methods.base import Method, MethodContext, register
from vlprompt.methods.zeroshot import ZeroShot
from vlprompt.methods.zeroshot_ensemble import resolve_templates


@dataclasses.dataclass(frozen=True)
class CuPLConfig:
    templates: str | tuple[str, ...] | None = None  # None: descriptions only (CuPL); else as zeroshot_ensemble
    descriptions: str = (
        "cupl"  # the store's source: CuPL's GPT-3 files (on ImageNet the one classify_imagenet.py reads)
    )


def pooled_classifier(backbone, sentences: list[list[str]]) -> torch.Tensor:
    """(C, D): per class, the normalised mean of the normalised features of its sentences (encoded in one pass)."""
    flat = [s for group in sentences for s in group]
    feats = encode_prompts(backbone, flat)  # (Σ|S_c|, D), normalised
    sizes = [len(group) for group in sentences]
    return F.normalize(torch.stack([chunk.mean(0) for chunk in feats.split(sizes)]), dim=-1)


@register
class CuPL(ZeroShot):
    name = "cupl"
    family = "class descriptions"
    paper = (
        "Pratt et al., What does a platypus look like? Generating customized prompts for zero-shot image "
        "classification, ICCV 2023"
    )
    description = "zero-shot classifier from the mean of class descriptions written by a language model"
    Config = CuPLConfig

    def __init__(self, config: CuPLConfig, ctx: MethodContext):
        Method.__init__(self, config, ctx)
        self.backbone = ctx.backbone
        self.descriptions, self.dataset = ctx.descriptions, ctx.dataset
        self.templates = (
            [] if config.templates is None else resolve_templates(config.templates, ctx.backbone, ctx.dataset)
        )
        self.set_classes(ctx.classnames)

    def set_classes(self, classnames: list[str]) -> None:
        descs = descriptions_for(self.descriptions, self.dataset, classnames, self.config.descriptions)
        sentences = [[t.format(prompt_name(c)) for t in self.templates] + descs[c] for c in classnames]
        self.register_buffer("weights", pooled_classifier(self.backbone, sentences), persistent=False)

    def run_info(self) -> dict:
        descriptions = source_record(self.descriptions, self.dataset, self.config.descriptions)
        return {"descriptions": descriptions, "templates": len(self.templates)}


@dataclasses.dataclass(frozen=True)
class CuPLEnsembleConfig(CuPLConfig):
    templates: str | tuple[str, ...] | None = "auto"


@register
class CuPLEnsemble(CuPL):
    name = "cupl_ensemble"
    description = "CuPL + e: class descriptions pooled with the hand-crafted template ensemble"
    Config = CuPLEnsembleConfig
