"""The shared part of the searches that ask a proposer (a language model, a replayed trace or a rule) for new text
templates and keep the best on the few-shot training images: IPO (``ipo.py``) and LLM-BBO (``llm_bbo.py``).

The classifier is zero-shot CLIP's with the found template, w_c = normalize(E_text(template with class c)), logits
= s · normalize(f(x)) · Wᵀ, so it classifies any class, new classes under base-to-new included. The search scores
templates on the few-shot training images un-augmented (the feature bank's ``plain`` part); the test split is never
read. Each subclass writes its reference's meta-prompt and parses its reference's responses; the proposer is the
config's (``proposer``: ``rule``, ``trace`` or ``live``; :mod:`vlprompt.methods.proposers`), and every run records it
in ``method_info.proposer``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlprompt.clip.backbone import encode_prompts
from vlprompt.clip.prompting import prompt_name
from vlprompt.methods.base import Method, MethodContext, MethodError, normalize
from vlprompt.methods.proposers import Proposer, Sampling, build_proposer


@dataclasses.dataclass(frozen=True)
class TemplateSearchConfig:
    steps: int = 10
    proposer: str = "rule"  # rule (stand-in, not a language model) | trace (replay a recorded trace) | live
    trace_dir: str = ""  # trace: the folder holding <method>/<dataset>/seed<seed>.jsonl; live: where to write it
    llm_model: str = "gpt-3.5-turbo"  # recorded with each step; the model `live` calls
    temperature: float = 1.0
    max_tokens: int = 40


class TemplateSearch(Method):
    family = "discrete prompt"
    slot: ClassVar[str] = "{}"  # the class name's place in a template
    initial_template: ClassVar[str] = "a photo of a {}."

    template_utf8: torch.Tensor  # the found template's UTF-8 bytes (what a trained artefact stores)
    weights: torch.Tensor  # (C, D) normalised text features of the current classes

    def __init__(self, config: TemplateSearchConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if config.steps < 0:
            raise MethodError(f"{self.name}: steps >= 0")
        self.backbone, self.dataset, self.seed = ctx.backbone, ctx.dataset, ctx.seed
        self.context_length = int(ctx.backbone.model.positional_embedding.shape[0])
        self.template = self.initial_template
        self.register_buffer("template_utf8", torch.tensor(list(self.template.encode()), dtype=torch.uint8))
        self.info: dict = {}
        self.set_classes(ctx.classnames)

    # ------------------------------------------------------------------ the classifier of a template

    def prompts(self, template: str, classnames: list[str]) -> list[str]:
        return [template.replace(self.slot, prompt_name(c)) for c in classnames]

    def fits(self, template: str, classnames: list[str]) -> bool:
        """Whether every class's prompt fits the text encoder's context (the references skip longer prompts)."""
        tokenizer = self.backbone.tokenizer
        encode = getattr(tokenizer, "encode", None)
        if encode is None:  # a tokenizer without encode: its padded ids, end token at the argmax
            return all(int(t.argmax()) < self.context_length - 1 for t in tokenizer(self.prompts(template, classnames)))
        return all(len(encode(p)) + 2 <= self.context_length for p in self.prompts(template, classnames))

    def classifier(self, template: str, classnames: list[str]) -> torch.Tensor:
        return encode_prompts(self.backbone, self.prompts(template, classnames))

    def set_classes(self, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        self.register_buffer("weights", self.classifier(self.template, self.classnames), persistent=False)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * normalize(image_features) @ self.weights.T

    def train_logits(self, template: str, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * x @ self.classifier(template, self.classnames).to(x.device).T

    # ------------------------------------------------------------------ the search

    def make_proposer(self) -> Proposer:
        c = self.config
        sampling = Sampling(c.llm_model, c.temperature, c.max_tokens)
        return build_proposer(c.proposer, c.trace_dir, self.name, self.dataset, self.seed, sampling)

    def search(self, x: torch.Tensor, y: torch.Tensor, proposer: Proposer, ctx: MethodContext) -> str:
        raise NotImplementedError

    def fit(self, ctx: MethodContext) -> bool:
        features, labels, note = ctx.plain_training_data()
        if note:
            self.info["training_features"] = note
        x, y = normalize(features).to(ctx.device), labels.to(ctx.device)
        proposer = self.make_proposer()
        self.template = self.search(x, y, proposer, ctx)
        self.template_utf8 = torch.tensor(list(self.template.encode()), dtype=torch.uint8)
        self.set_classes(self.classnames)
        self.info.update(template=self.template, proposer=proposer.record())
        return True

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {"template_utf8": self.template_utf8.detach().cpu()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        if "template_utf8" not in state:
            raise MethodError(f"checkpoint lacks template_utf8 for method {self.name!r}")
        self.template = bytes(state["template_utf8"].tolist()).decode()
        self.template_utf8 = state["template_utf8"].clone()
        self.set_classes(self.classnames)

    def run_info(self) -> dict:
        return self.info


def accuracy_and_loss(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(top-1 accuracy in percent, as Dassl's ``compute_accuracy`` computes it: the count as a float32 tensor times
    100 / N, so the number IPO's meta-prompt shows is the reference's to the last digit; mean cross-entropy)."""
    correct = (logits.argmax(-1) == y).float().sum(0, keepdim=True).cpu()
    return correct.mul_(100.0 / len(y)).item(), float(F.cross_entropy(logits, y))
