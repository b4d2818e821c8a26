"""GLOV without guidance: a language model proposes CLIP templates from a meta-prompt of the best and the worst
templates so far and their 1-shot accuracies (Mirza et al., "GLOV: Guided Large Language Models as Implicit
Optimizers for Vision Language Models", arXiv 2410.06154), driven through the workbench's proposers.

Reference implementation read (not copied): jmiemirza/GLOV at commit 4c4fe64: ``main_clip.py`` (``llm_opt``: the
loop), ``utils/opt_utils.py`` (``generate_meta_prompt_llama``, ``generate_examplers``, ``main``),
``utils/llm_opt_helpers.py`` (``parse_json_respones``, ``evaluate_prompts``, ``get_previous_prompts``,
``evaluate_best_prompts``), ``trainers/llama_model.py`` (``text_generation``, ``initialize_dict``) and
``scripts/clip_opt.sh`` (Llama-3-8B-Instruct, 100 global steps, top/bottom 5, 1 shot, temperature 1, top-p 0.9).

**What is not here: the guidance.** GLOV steers the language model by adding, at one hidden layer (17), the
difference of the mean embeddings of the best and the worst prompts to its activations. That needs a white-box
model's weights and hidden states, which no proposer of the workbench has (a trace records text, an endpoint returns
text, the rule proposer is not a model): this method is GLOV *without guidance* (the reference's
``text_generation``), and its published guided templates are evaluated by ``glov_replay``.

The loop, 1-shot zero-shot transfer as the reference runs it (templates found on the 1-shot training images of a
dataset's classes, applied zero-shot to its test images):

    step 0: T = "A photo of a <category>.", acc(T) = its accuracy in percent on the 1-shot images
            meta-prompt: the step-0 text with "Prompt: a photo of a <category>." and "Accuracy: acc(T)"
    step i ≥ 1: H = every template so far, sorted by accuracy ascending (np.argsort, as the reference);
            k = min(5, ⌊|H| / 2⌋); best = the last k, worst = the first k, each "j: template --- Accuracy: int(acc)"
    each step: 10 responses (num_return_sequences), each with its line breaks and "assistant" removed, joined one a
            line; each line's text after its last ":" is a template, "<category>" -> "{}"; each scored
    the step's ensemble: its 3 best templates (with a "{}"), w_c = normalize(mean_t normalize(E_text(t(c))))

:func:`meta_prompt` is the reference's system and user messages for a given history (a test rebuilds them from the
reference's f-strings). The proposer is the config's (``proposer``: rule, trace or live; ``vlprompt.methods.
proposers``); the system message travels with a live request and is recorded in the trace.

Assumptions and deviations, each documented:
- The dataset description of the meta-prompt (the reference's ``dataset_info``, one text per dataset): on the pocket
  world a rule (:func:`pocket_dataset_description`), elsewhere the config's ``dataset_description``.
- Which step's ensemble is the result: the reference logs each step's ensemble with its 1-shot and validation
  accuracy and leaves the choice to the reader; here the step whose ensemble is best on the few-shot subset's
  validation images (ties: the earliest), or on the 1-shot training images when there are none (an assumption).
- A line without "{}" is dropped (the reference scores it, every class then getting the same text); a template that
  does not fit the text encoder's context for some class is dropped (the reference truncates).
- Scoring on the few-shot images un-augmented (the bank's ``plain`` part).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from vlprompt.clip.backbone import encode_prompts
from vlprompt.clip.prompting import prompt_name
from vlprompt.methods.base import MethodContext, MethodError, normalize, register
from vlprompt.methods.glov_replay import EMPTY_BRACES, fill
from vlprompt.methods.proposers import Proposer, Request
from vlprompt.methods.template_search import TemplateSearch, TemplateSearchConfig

SYSTEM = (
    "You are helpful AI assistant who is going to help me with finding the best prompt templates to embed the class "
    "names for my dataset for zero-shot classification with CLIP. Let's Go!"
)


def examplers(best: list[tuple[str, int]], worst: list[tuple[str, int]]) -> tuple[str, str]:
    """``generate_examplers``: numbered lines "j: template --- Accuracy: acc"."""
    return (
        "".join(f"{i + 1}: {t} --- Accuracy: {a}\n" for i, (t, a) in enumerate(best)),
        "".join(f"{i + 1}: {t} --- Accuracy: {a}\n" for i, (t, a) in enumerate(worst)),
    )


def meta_prompt(
    dataset: str,
    description: str,
    step: int,
    accuracy: float,
    history: list[tuple[str, float]] | None = None,
    k: int = 5,
    prompt: str = "a photo of a <category>.",
) -> tuple[str, str]:
    """(system message, user message) of ``generate_meta_prompt_llama`` without mistakes: ``accuracy`` the initial
    template's (step 0), ``history`` (template, accuracy) sorted by accuracy ascending (steps ≥ 1)."""
    if step == 0:
        task = (
            "You are provided with a dataset name, description, a prompt template and the resulting classification "
            "accuracy of the model from this prompt. Your task is to provide me with a new prompt template in the same "
            "format as the given prompt, so that I can simply replace the <category> placeholders with the actual "
            "class names in the dataset and use it for zero-shot classification with CLIP. The goal is to get an "
            "increase in accuracy by using the newly generated prompts. You can use the dataset description to "
            "provide me with more tailored prompt templates for the dataset. Be creative! Good luck!"
            f"\n\nDataset: {dataset}\nDescription: {description}\nPrompt: {prompt}\nAccuracy: {accuracy}\n"
            "# Remember to only provide me the prompt as a response, and nothing else."
        )
        return SYSTEM, task
    if not history:
        raise MethodError("glov: a step after the first needs the scored templates so far")
    k = min(k, int(len(history) * 0.5))
    top, bottom = history[-k:], history[:k]  # as the reference slices (k = 0: every template is "best")
    best, worst = examplers([(t, int(a)) for t, a in top], [(t, int(a)) for t, a in bottom])
    task = (
        f"You are provided with a dataset name, description, top {k} and worst {k} example prompt templates with "
        f"their associated accuracies from the last {step + 1} runs. Your task is to provide me with 1 new prompt "
        "templates in the same format as the given prompts, so that I can simply replace the <category> "
        "placeholders with the actual class names in the dataset and use it for zero-shot classification with CLIP. "
        "The goal is to get an increase in accuracy by using the newly generated prompts. You can use the dataset "
        "description and the best and worst example prompts as context for improving accuracy. Be creative! Good "
        f"luck!\n\nDataset: {dataset}\nDescription: {description}\nBest Templates:\n {best}\nWorst Templates:\n "
        f"{worst}### Remember to only provide me the prompt as a response, and nothing else. ####"
    )
    return SYSTEM, task


def parse_responses(responses: list[str]) -> list[str]:
    """The templates of one step's responses (``initialize_dict`` then ``parse_json_respones``, Llama branch): each
    response without line breaks and "assistant", one a line; each line's text after its last ":", "<category>" ->
    "{}" (the reference's final empty line kept, and dropped with every other line without "{}" by the caller)."""
    text = "".join(r.replace("\n", "").replace("assistant", "") + "\n" for r in responses)
    return [line.split(":")[-1].replace("<category>", "{}") for line in text.split("\n")]


def sort_history(templates: list[str], accuracies: list[float]) -> list[tuple[str, float]]:
    """``get_previous_prompts``: (template, accuracy) in the order of ``np.argsort`` of the accuracies."""
    order = np.argsort(accuracies)
    return [(templates[i], accuracies[i]) for i in order]


def pocket_dataset_description(dataset: str) -> str:
    """The rule's description of a pocket dataset (the reference's per-dataset ``dataset_info`` text)."""
    from vlprompt.data.pocket import STYLES
    from vlprompt.data.registry import get_dataset

    style = get_dataset(dataset).style or "photo"
    look = f"{STYLES[style][0]} renderings" if STYLES[style][0] else "clean photos"
    return (
        f"The {dataset} dataset consists of small {look} of coloured geometric shapes on plain or textured "
        "backgrounds; each class is a colour and a shape, such as red circle."
    )


@dataclasses.dataclass(frozen=True)
class GLOVConfig(TemplateSearchConfig):
    steps: int = 100  # global_steps (scripts/clip_opt.sh)
    per_step: int = 10  # num_return_sequences
    top_bottom: int = 5
    ensemble: int = 3  # evaluate_best_prompts: the step's best 3 templates
    llm_model: str = "meta-llama/Meta-Llama-3-8B-Instruct"
    max_tokens: int = 50  # max_new_tokens of text_generation
    dataset_description: str = ""  # non-pocket datasets: the meta-prompt's description of the dataset


@register
class GLOV(TemplateSearch):
    name = "glov"
    paper = "Mirza et al., GLOV: Guided Large Language Models as Implicit Optimizers for Vision Language Models, 2024"
    description = "a language model proposes templates from the best and worst so far (GLOV without its guidance)"
    Config = GLOVConfig
    slot = "{}"
    initial_template = "A photo of a {}."

    def classifier(self, template: str, classnames: list[str]) -> torch.Tensor:
        """(C, D): the ensemble of the templates in ``template`` (one a line), as ``txt_features``."""
        templates = template.split("\n")
        rows = []
        for c in classnames:
            texts = [t for t in (fill(x, prompt_name(c)) for x in templates) if t is not None]
            if not texts:
                raise MethodError(f"glov: no template of {templates!r} gives a prompt for class {c!r}")
            rows.append(F.normalize(encode_prompts(self.backbone, texts).mean(0), dim=-1))
        return torch.stack(rows)

    def description_text(self) -> str:
        if self.config.dataset_description:
            return self.config.dataset_description
        if not str(self.dataset).startswith("pocket"):
            raise MethodError(
                f"glov: dataset {self.dataset!r} needs `dataset_description`, the meta-prompt's description of it"
            )
        return pocket_dataset_description(str(self.dataset))

    def accuracy(self, template: str, x: torch.Tensor, y: torch.Tensor) -> float:
        """``evaluate_prompts``: correct / total · 100 in Python floats."""
        pred = self.train_logits(template, x).argmax(-1)
        return (float((pred == y).sum()) / len(y)) * 100

    def usable(self, template: str) -> bool:
        return (
            bool(EMPTY_BRACES.search(template))
            and all(fill(template, prompt_name(c)) is not None for c in self.classnames)
            and self.fits(template, self.classnames)
        )

    def search(self, x: torch.Tensor, y: torch.Tensor, proposer: Proposer, ctx: MethodContext) -> str:
        c = self.config
        description, dataset = self.description_text(), str(self.dataset)
        val = None
        if ctx.val_features is not None and ctx.val_labels is not None and len(ctx.val_labels):
            val = (normalize(ctx.val_features).to(x.device), ctx.val_labels.to(x.device))
        first = self.initial_template.replace("{}", "<category>")
        acc0 = self.accuracy(self.initial_template, x, y)
        templates, accuracies = [first], [acc0]  # the reference's df_logs, in its order
        ensembles = [[self.initial_template]]  # step 0: 'A photo of a {}.'
        for step in range(c.steps):
            history = None if step == 0 else sort_history(templates, accuracies)
            system, user = meta_prompt(dataset, description, step, acc0, history, c.top_bottom)
            request = Request(step, user, c.per_step, tuple(history or [(first, acc0)]), "{}", "<category>", system)
            scored = []
            for line in parse_responses(proposer.propose(request)):
                if self.usable(line):
                    scored.append((line, self.accuracy(line, x, y)))
            templates += [t.replace("{}", "<category>") for t, _ in scored]
            accuracies += [a for _, a in scored]
            if step > 0 and len(scored) >= 5:  # the reference's failed_flag: fewer than 5 templates
                ranked = sort_history([t for t, _ in scored], [a for _, a in scored])
                ensembles.append([t for t, _ in ranked][-c.ensemble :])
        on = val if val is not None else (x, y)
        scores = [self.accuracy("\n".join(e), *on) for e in ensembles]
        best = int(np.argmax(scores))  # the first of ties
        self.info.update(
            steps=c.steps,
            templates_scored=len(templates),
            chosen_step_ensemble=ensembles[best],
            chosen_on="validation images" if val is not None else "1-shot training images (no validation images)",
            chosen_accuracy=round(scores[best], 4),
            guidance="none: steering needs a white-box language model's hidden states (GLOV without guidance)",
        )
        return "\n".join(ensembles[best])
