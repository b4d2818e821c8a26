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
"shape". A user's own dataset (``user_datasets``), which no search covered, uses ImageNet's ("color", "shape";
give ``attributes`` in ``method_overrides`` for better ones).

The reference slices its tokenised prompt as if every attribute word were one token (``token_middle1 =
embedding[:, 1 + n_att1 : n_att1 + 2]`` and so on). Where a word is several tokens the slices shift: on OxfordPets
("playfulness" = "play" + "fulness", "energy") its prompt is [SOS][u¹] play [u²] X [v] X CLASS. — "fulness" and
"energy" are overwritten by soft tokens and the placeholder words "X" stay in. ``attribute_tokens`` chooses:
``"reference"`` (the default, because the published numbers come from it; identical to ``"all"`` wherever every
attribute is one token, i.e. every dataset but OxfordPets) writes the soft tokens where the reference does;
``"all"`` keeps every token of every attribute word (the paper's prompt as written).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch

from vlprompt.clip.prompting import PatternPrompts
from vlprompt.methods.base import Method, MethodContext, MethodError, register
from vlprompt.methods.coop import CoOp, CoOpConfig

ATTRIBUTE_TOKENS = ("reference", "all")


class ReferenceSlicedPrompts(PatternPrompts):
    """ATPrompt's pattern with the soft tokens at the positions the reference's slicing gives them: after SOS, each
    attribute's A soft tokens followed by ONE frozen token, then the M context tokens, whatever the number of
    tokens of each attribute word (see the module docstring)."""

    def set_classes(self, classnames: list[str]) -> None:
        super().set_classes(classnames)
        at = 1
        for name, p in self.slots.items():  # att0, att1, ..., ctx in the pattern's order
            n = p.shape[0]
            pos = torch.arange(at, at + n, device=self.tokens.device).expand(len(classnames), n)
            self.register_buffer(f"pos_{name}", pos.contiguous(), persistent=False)
            at += n + 1


DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@contextlib.contextmanager
def prompt_errors(method: str) -> Iterator[None]:
    """A class name that cannot be written into the method's prompts (longer than the text encoder's context, or
    tokenized so that a learnable slot has no place) as a MethodError: one line naming the class and the fix."""
    try:
        yield
    except MethodError:
        raise
    except ValueError as err:
        raise MethodError(f"{method}: {err}") from None


@lru_cache(maxsize=4)
def _per_dataset(filename: str) -> dict:
    return json.loads((DATA_DIR / filename).read_text())["datasets"]


def is_user_dataset(dataset: str | None) -> bool:
    """Whether ``dataset`` is one of the config's own datasets (``user_datasets``), which no reference knows."""
    from vlprompt.data.registry import DatasetError, get_dataset

    try:
        return dataset is not None and get_dataset(dataset).kind == "user"
    except DatasetError:
        return False


def per_dataset(filename: str, dataset: str | None, what: str) -> dict:
    """The entry of ``dataset`` in a per-dataset data file (aliases resolved; every pocket_* dataset -> "pocket"; a
    user's own dataset, which no reference searched, -> "ImageNet", the references' general-purpose entry)."""
    entries = _per_dataset(filename)
    name = "pocket" if dataset and dataset.startswith("pocket") else dataset
    name = "ImageNet" if is_user_dataset(dataset) else name
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
    attribute_tokens: str = "reference"  # reference: soft tokens where the reference's slicing puts them | all


@register
class ATPrompt(CoOp):
    name = "atprompt"
    paper = "Li et al., Advancing Textual Prompt Learning with Anchored Attributes, ICCV 2025"
    description = "CoOp with fixed attribute words between soft tokens: [soft] colour [soft] shape [soft] CLASS"
    Config = ATPromptConfig

    def __init__(self, config: ATPromptConfig, ctx: MethodContext):
        if config.csc or config.class_token_position != "end" or config.ctx_init:
            raise MethodError(
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
        if config.attribute_tokens not in ATTRIBUTE_TOKENS:
            raise MethodError(
                f"atprompt: attribute_tokens must be one of {ATTRIBUTE_TOKENS}, got {config.attribute_tokens!r}"
            )
        gen = torch.Generator().manual_seed(ctx.seed)
        prompts = ReferenceSlicedPrompts if config.attribute_tokens == "reference" else PatternPrompts
        with prompt_errors(self.name):
            self.prompt_learner = prompts(
                ctx.encoder, ctx.backbone.tokenizer, ctx.classnames, pattern, slots, init, generator=gen
            )

    def set_classes(self, classnames: list[str]) -> None:
        with prompt_errors(self.name):
            super().set_classes(classnames)
