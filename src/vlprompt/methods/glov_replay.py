"""GLOV's discovered templates, replayed: zero-shot CLIP with the prompts GLOV found (Mirza et al., "GLOV: Guided
Large Language Models as Implicit Optimizers for Vision Language Models", arXiv 2410.06154).

Reference implementation read (not copied): jmiemirza/GLOV at commit 4c4fe64: ``utils/discovered_prompts.py`` (the
published templates per dataset, found with guidance, ``lov_guidance_templates_clip``, and without,
``lov_templates_clip``) and ``trainers/zero_shot_gpt.py`` (``CLIP_Zero_Shot_adapt.txt_features``: the ensemble).

GLOV's search steers a white-box language model (Llama-3-8B-Instruct) at a hidden layer, which needs the model's
weights and activations: it cannot run here. What can be reproduced exactly is the evaluation of its final artefact,
the discovered templates, as the reference evaluates them:

    w_c = normalize( (1/|T_c|) Σ_{t ∈ T_c} normalize(E_text(fill(t, class_c))) )
    fill(t, c): skipped without "{}" (the reference's pattern ``\\{\\s*\\}``); one "{}": t.format(c), skipped when
                that fails; several: each "{}" replaced by c
    logits(x) = s · normalize(f(x)) · w_cᵀ

The templates are not shipped (the repository has no licence): a user writes them to a JSON file, an object with the
reference's two names as keys, each mapping a dataset's name (as the reference spells it: "OxfordPets", "EuroSAT",
"DescribableTextures", ...) to its list (docs/language_models.md shows the one-line conversion of
``discovered_prompts.py``), and names it in ``prompts_file``. Each run records the file's SHA-256 and the list used.
Deviation: prompts longer than the text encoder's context are truncated by its tokenizer, as the reference's
``clip.tokenize(..., truncate=True)``; the pocket CLIP's context is 20 tokens, so these long templates are for real
backbones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt.clip.backbone import encode_prompts
from vlprompt.clip.prompting import prompt_name
from vlprompt.methods.base import Method, MethodContext, MethodError, register
from vlprompt.methods.zeroshot import ZeroShot

KEYS = {True: "lov_guidance_templates_clip", False: "lov_templates_clip"}
EMPTY_BRACES = re.compile(r"\{\s*\}")


def fill(template: str, classname: str) -> str | None:
    """The prompt the reference builds from ``template`` for a class, or None where it skips the template."""
    if not EMPTY_BRACES.search(template):
        return None
    if template.count("{}") == 1:
        try:
            return template.format(classname)
        except (ValueError, KeyError):
            return None
    return template.replace("{}", classname)


@dataclasses.dataclass(frozen=True)
class GLOVReplayConfig:
    prompts_file: str = ""  # JSON: {"lov_guidance_templates_clip": {dataset: [...]}, "lov_templates_clip": {...}}
    guidance: bool = True  # the templates found with guidance (GLOV) or without (GLOV w/o guidance)
    dataset_name: str = ""  # the dataset's name in the file; "" = the workbench's dataset name


@register
class GLOVReplay(ZeroShot):
    name = "glov_replay"
    family = "discrete prompt"
    paper = "Mirza et al., GLOV: Guided Large Language Models as Implicit Optimizers for Vision Language Models, 2024"
    description = "zero-shot CLIP with the templates GLOV discovered, read from a user's file (the search is not run)"
    Config = GLOVReplayConfig

    def __init__(self, config: GLOVReplayConfig, ctx: MethodContext):
        Method.__init__(self, config, ctx)
        self.backbone = ctx.backbone
        path = Path(config.prompts_file)
        if not config.prompts_file or not path.is_file():
            raise MethodError(
                f"glov_replay: prompts_file {config.prompts_file!r} is not a file; write GLOV's discovered templates "
                "to a JSON file (docs/language_models.md) and name it in method_overrides"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        key, name = KEYS[config.guidance], config.dataset_name or str(ctx.dataset)
        lists = data.get(key) if isinstance(data, dict) else None
        if not isinstance(lists, dict) or name not in lists:
            known = sorted(lists) if isinstance(lists, dict) else []
            raise MethodError(f"glov_replay: {path} has no {key!r} list for {name!r} (set dataset_name); has {known}")
        self.templates = list(lists[name])
        self.info = {
            "prompts": f"{path} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()})",
            "list": f"{key}[{name!r}]",
            "templates": len(self.templates),
            "proposer": {"kind": "published", "about": f"GLOV's published templates ({key}), replayed"},
        }
        self.set_classes(ctx.classnames)

    def set_classes(self, classnames: list[str]) -> None:
        rows = []
        for c in classnames:
            texts = [t for t in (fill(template, prompt_name(c)) for template in self.templates) if t is not None]
            if not texts:
                raise MethodError(f"glov_replay: no template of the list gives a prompt for class {c!r}")
            rows.append(F.normalize(encode_prompts(self.backbone, texts).mean(0), dim=-1))
        self.register_buffer("weights", torch.stack(rows), persistent=False)

    def run_info(self) -> dict:
        return self.info
