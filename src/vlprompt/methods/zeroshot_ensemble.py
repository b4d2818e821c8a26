"""Zero-shot CLIP with a prompt ensemble (Radford et al., ICML 2021, section 3.1.4).

Reference: openai/CLIP, notebooks/Prompt_Engineering_for_ImageNet.ipynb (``zeroshot_classifier``) and
CoOp's ``ZeroshotCLIP2`` (KaiyangZhou/CoOp, trainers/zsclip.py), read, not copied. The ensemble is
taken in embedding space: for templates t_1 … t_T

    w_c = normalize( (1/T) Σ_t normalize(E_text(t.format(classname_c))) )
    logits(x) = s · normalize(f(x)) · w_cᵀ

The template lists live in ``vlprompt/data/prompt_ensembles.json`` with their source. ``templates="auto"``
picks the pocket list (the generic caption templates the pocket CLIP was pretrained with) for the pocket
backbone, CLIP's list for the dataset when the context names a known dataset, and CLIP's 80 ImageNet
templates otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import torch

from vlprompt.clip.backbone import POCKET_MODEL, Backbone
from vlprompt.clip.prompting import text_classifier
from vlprompt.methods.base import Method, MethodContext, MethodError, register
from vlprompt.methods.zeroshot import ZeroShot

ENSEMBLES_FILE = Path(__file__).resolve().parent.parent / "data" / "prompt_ensembles.json"


@lru_cache(maxsize=1)
def template_sets() -> dict[str, list[str]]:
    """Named template lists (aliases resolved)."""
    sets = json.loads(ENSEMBLES_FILE.read_text())["sets"]
    return {name: sets[v] if isinstance(v, str) else v for name, v in sets.items()}


def resolve_templates(spec: str | tuple | list, backbone: Backbone, dataset: str | None) -> list[str]:
    """A list of templates from a set name, ``"auto"``, or an explicit list."""
    if not isinstance(spec, str):
        templates = list(spec)
    elif spec == "auto":
        if backbone.name == POCKET_MODEL:
            templates = template_sets()["pocket"]
        else:
            templates = template_sets().get(dataset or "", template_sets()["ImageNet"])
    elif spec in template_sets():
        templates = template_sets()[spec]
    else:
        raise MethodError(
            f"unknown template set {spec!r}; available: {sorted(template_sets())} or 'auto' "
            "or a list of templates with '{{}}'"
        )
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise MethodError(f"templates must each hold one '{{}}' for the class name; got {bad or templates}")
    return templates


def ensemble_weights(backbone: Backbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """(n_cls, D) normalised mean of the normalised features of every template."""
    return text_classifier(backbone, templates, classnames)


@dataclasses.dataclass(frozen=True)
class ZeroShotEnsembleConfig:
    # "auto", a set name from prompt_ensembles.json ("ImageNet", "ImageNet7", "pocket", a dataset), or a list
    templates: str | tuple[str, ...] = "auto"


@register
class ZeroShotEnsemble(ZeroShot):
    name = "zeroshot_ensemble"
    description = "zero-shot CLIP with a prompt ensemble (mean of normalised text features over templates)"
    Config = ZeroShotEnsembleConfig

    def __init__(self, config: ZeroShotEnsembleConfig, ctx: MethodContext):
        Method.__init__(self, config, ctx)
        self.backbone = ctx.backbone
        self.templates = resolve_templates(config.templates, ctx.backbone, ctx.dataset)
        self.set_classes(ctx.classnames)
