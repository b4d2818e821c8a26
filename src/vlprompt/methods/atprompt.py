"""ATPrompt: attribute-anchored textual prompts (Li et al., "Advancing Textual Prompt Learning with Anchored
Attributes", ICCV 2025, arXiv 2412.09442), on CoOp. The prompt's soft tokens are interleaved with fixed
attribute words.

Reference implementation read (not copied): zhengli97/ATPrompt, trainers/coop_atp.py (``PromptLearner``),
train.py (``choose_attribute_for_atprompt``: the attributes per dataset) and scripts/coop/
atprompt_base2new_train.sh (``CoOp_ATP``: 2 soft tokens per attribute and 2 before the class, 100 epochs, batch
32, SGD lr 0.002, cosine, 1 constant warm-up epoch, configs/trainers/CoOp/vit_b16.yaml).

For attributes a_1 … a_K (K = 1 … 3 words, e.g. "color", "shape") the prompt of class c is

    t_c = [SOS][u¹_1 … u¹_A] a_1 [u²_1 … u²_A] a_2 … [v_1 … v_M][CLASS_c][.][EOS]

with learnable attribute tokens u^k (A per attribute, init N(0, 0.01²)) and class context v (M tokens, init
N(0, 0.02²); the reference ignores ``CTX_INIT``), shared by all classes; the attribute words stay the frozen
embeddings of their tokens. Then as CoOp: w_c = normalize(g(t_c)), logits = s · x̂ · Wᵀ, L = CE.

The attributes are the ones the paper's differentiable search selected per dataset, shipped with their source in
``vlprompt/data/atprompt_attributes.json``; the search itself (which needs a language model to propose the
candidates) is not reimplemented. The pocket datasets use the pocket world's own attributes, "colour" and
"shape". The reference keeps one token per attribute word; here an attribute of several tokens keeps all of them.
"""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from pathlib import Path

import torch

from vlprompt.clip.prompting import PatternPrompts
from vlprompt.methods.base import Method, MethodContext, MethodError, register
from vlprompt.methods.coop import CoOp, CoOpConfig

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@lru_cache(maxsize=4)
def _per_dataset(filename: str) -> dict:
    return json.loads((DATA_DIR / filename).read_text())["datasets"]


def per_dataset(filename: str, dataset: str | None, what: str) -> dict:
    """The entry of ``dataset`` in a per-dataset data file (aliases resolved; every pocket_* dataset -> "pocket")."""
    entries = _per_dataset(filename)
    name = "pocket" if dataset and dataset.startswith("pocket") else dataset
    entry = entries.get(name or "")
    if isinstance(entry, str):
        entry = entries[entry]
    if entry is None:
        raise MethodError(
            f"no {what} for dataset {dataset!r} in vlprompt/data/{filename}; known: "
            f"{sorted(entries)}. Give them explicitly in the method's config"
        )
    return entry


@dataclasses.dataclass(frozen=True)
class ATPromptConfig(CoOpConfig):
    epochs: int = 100
    n_ctx: int = 2  # M, soft tokens before the class name
    ctx_init: str | None = None  # the reference initialises randomly
    n_att_ctx: int = 2  # A, soft tokens before each attribute word
    att_init_std: float = 0.01
    ctx_init_std: float = 0.02
    attributes: str | tuple[str, ...] = "auto"  # "auto": the searched attributes of the dataset; or words


@register
class ATPrompt(CoOp):
    name = "atprompt"
    paper = "Li et al., Advancing Textual Prompt Learning with Anchored Attributes, ICCV 2025"
    description = "CoOp with fixed attribute words between soft tokens: [soft] colour [soft] shape [soft] CLASS"
    Config = ATPromptConfig

    def __init__(self, config: ATPromptConfig, ctx: MethodContext):
        if config.csc or config.class_token_position != "end" or config.ctx_init:
            raise ValueError(
                "atprompt: shared, randomly initialised context with the class at the end only (as the reference)"
            )
        Method.__init__(self, config, ctx)
        spec = config.attributes
        if spec == "auto":
            spec = per_dataset("atprompt_attributes.json", ctx.dataset, "ATPrompt attributes")["searched"]
        attrs = [spec] if isinstance(spec, str) else list(spec)
        if not 1 <= len(attrs) <= 3:
            raise MethodError(f"atprompt: 1 to 3 attributes, got {attrs}")
        self.attributes = attrs
        slots = {f"att{k}": config.n_att_ctx for k in range(len(attrs))}
        init: dict[str, str | float] = {s: config.att_init_std for s in slots}
        slots["ctx"], init["ctx"] = config.n_ctx, config.ctx_init_std
        pattern = " ".join(f"{{att{k}}} {a}" for k, a in enumerate(attrs)) + " {ctx} {}."
        gen = torch.Generator().manual_seed(ctx.seed)
        self.prompt_learner = PatternPrompts(
            ctx.encoder, ctx.backbone.tokenizer, ctx.classnames, pattern, slots, init, generator=gen
        )
