"""IPO: interpretable prompt optimization (Du et al., "IPO: Interpretable Prompt Optimization for Vision-Language
Models", NeurIPS 2024, arXiv 2410.15397).

Reference implementation read (not copied): lmsdss/IPO at commit ac804a9: ``optimization/opt_utils.py``
(``gen_meta_prompt``, ``gen_ins_and_score_pairs_substr``, ``run_evolution``), ``optimization/eval_utils.py``
(``polish_sentence``), ``trainers/coop.py`` (``forward_backward_llm``: the prompt's accuracy and cross-entropy on
the training batch), ``train.py`` (settings) and ``scripts/IPO/train.sh`` (1 shot, base classes). Its
``optimization/train.sh`` holds API keys: nothing of it is used.

A language model (gpt-3.5-turbo, temperature 1) proposes text templates "... <CLASS> ..." from a meta-prompt that
holds an instruction, descriptions of the few-shot training images written by a multimodal model (MiniCPM-V-2), and
the best past templates with their score (training accuracy in percent) and loss (training cross-entropy):

    history H_0 = {("a photo of a <CLASS>.", acc, loss, -1)}
    step t: meta_t = gen_meta_prompt(H_{t-1}); 8 responses; each parsed between <INS> and </INS>, polished, kept if
            not proposed before (md5 of the text), at most the context length in tokens, at most 500 characters and
            without "INS"; each kept template T scored, H_t = H_{t-1} ∪ {(T, acc(T), loss(T), t)}
    meta-prompt: the templates of H sorted by (score, −loss), the last 30, those with score ≥ 20
    result: the last of H sorted by (score, −loss)

Defaults from ``train.py``: 100 steps, 8 templates a step, 30 in the meta-prompt, threshold 20, 100 score buckets
(which show the score unrounded). The string :func:`meta_prompt` is the reference's for the same history (a fixture,
``tests/data/language_model_fixtures.json``), including its fixed wording ("features of the flowers in the image")
on every dataset.

Deviations, each forced or documented:
- Loss: the reference puts the loss tensor itself in the meta-prompt (its printed form, with 4 decimals); here the
  loss rounded to 4 decimals, as a float.
- Scoring on the few-shot images un-augmented (the bank's ``plain`` part); the reference scores the training loader's
  augmented batch (random crop and flip).
- New templates of one step are scored in the order the model wrote them; the reference goes through
  ``list(set(...))``, whose order changes from run to run with Python's string hashing.
- Image descriptions: on the pocket world a rule writes one per few-shot image from its class's colour and shape and
  the dataset's rendering style (:func:`pocket_image_descriptions`; a stand-in for MiniCPM-V-2, which would also see
  pose, size and background); elsewhere the file ``image_descriptions`` (the reference's ``desc/<d>_1_shot_image.txt``
  format, written for the workbench's own few-shot images).
- The proposer is the config's (a recorded trace, the rule-based stand-in or a live endpoint): see
  ``vlprompt.methods.proposers``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from vlprompt.data.descriptions import key
from vlprompt.methods.base import MethodContext, MethodError, register
from vlprompt.methods.proposers import Proposer, Request
from vlprompt.methods.template_search import TemplateSearch, TemplateSearchConfig, accuracy_and_loss

HEADER = (
    "You need to perform image classification on the large scale visual recognition dataset based on visual "
    "features.\n"
    "Here, <CLASS> represents a class name from the large scale visual recognition dataset, and it is essential to "
    "include <CLASS> in <INS>.\n"
    "Below are some previous instructions with their scores and loss. "
    "The score ranges from 0 to 100. "
    "The loss ranges from 0 to positive infinity.\n"
    "\nHere is a description of some features of the flowers in the image:\n"
)
REQUEST = (
    "\n\nGenerate an instruction that differs from all the instructions <INS>\u3000above, with a higher score and a "
    "lower loss. The instruction should begin with <INS> and end with </INS>. The instruction should be concise, "
    "effective, and generally applicable to all problems above.\n"
)


def meta_prompt(history: list[tuple[str, float, float, int]], descriptions: str, threshold: float = 20, top: int = 30):
    """The reference's meta-prompt (gpt-3.5-turbo, instruction at the question's beginning) for ``history``:
    (template, score, loss, step) tuples, ``descriptions`` the image descriptions' text."""
    ranked = sorted(history, key=lambda h: (h[1], -h[2]))[-top:]
    pairs = "".join(
        f"\ntext:\n{t}\nscore:\n{score}\nloss:\n{loss}\n"
        for t, score, loss, _ in ranked
        if not threshold or score >= threshold
    )
    return HEADER + descriptions + pairs + REQUEST


def parse_response(raw: str) -> str:
    """The template in a response: between <INS> and </INS> (either missing: the text's start or end), polished as
    the reference's ``polish_sentence`` (stripped, "**" removed, first letter upper-cased)."""
    start = raw.index("<INS>") + len("<INS>") if "<INS>" in raw else 0
    end = raw.index("</INS>") if "</INS>" in raw else len(raw)
    sentence = raw[start:end].strip()
    if sentence:
        sentence = sentence.replace("**", "")
        if len(sentence) > 1:
            sentence = sentence[0].upper() + sentence[1:]
    return sentence


def pocket_image_descriptions(classnames: list[str], labels: list[int], style: str | None) -> str:
    """The rule's descriptions of the few-shot images (one line "Image_<i>:..." each, joined as the reference joins
    the lines of its file): the class's colour and shape and the dataset's rendering style."""
    from vlprompt.data.pocket import STYLES

    adjective = STYLES.get(style or "photo", ("", ""))[0]
    look = f"a {adjective} rendering" if adjective else "a clean photo"
    lines = []
    for i, label in enumerate(labels):
        colour, shape = key(classnames[label]).split(" ", 1)
        lines.append(f"Image_{i}:The image shows a {colour} {shape} in {look}, a {shape} shape coloured {colour}.\n")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class IPOConfig(TemplateSearchConfig):
    steps: int = 100  # num_search_steps (train.py)
    per_step: int = 8  # num_generated_instructions_in_each_step
    in_meta_prompt: int = 30  # max_num_instructions
    score_threshold: float = 20.0  # old_instruction_score_threshold
    max_characters: int = 500
    image_descriptions: str = ""  # non-pocket datasets: a file of "Image_<i>:..." lines for the few-shot images


@register
class IPO(TemplateSearch):
    name = "ipo"
    paper = "Du et al., IPO: Interpretable Prompt Optimization for Vision-Language Models, NeurIPS 2024"
    description = (
        "a language model proposes templates from a meta-prompt of past templates, scores and image descriptions"
    )
    Config = IPOConfig
    slot = "<CLASS>"
    initial_template = "a photo of a <CLASS>."

    def image_descriptions(self, y: torch.Tensor) -> tuple[str, str]:
        """(the descriptions' text, where it comes from)."""
        if self.config.image_descriptions:
            path = Path(self.config.image_descriptions)
            if not path.is_file():
                raise MethodError(f"ipo: image_descriptions {path} does not exist (one 'Image_<i>:...' line per shot)")
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            return "\n".join(lines), f"{path} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]})"
        if not str(self.dataset).startswith("pocket"):
            raise MethodError(
                f"ipo: dataset {self.dataset!r} needs `image_descriptions`, a file of descriptions of its few-shot "
                "images (docs/language_models.md)"
            )
        from vlprompt.data.registry import get_dataset

        style = get_dataset(str(self.dataset)).style
        text = pocket_image_descriptions(self.classnames, y.tolist(), style)
        return text, "the pocket rule (class colour and shape, rendering style): a stand-in for MiniCPM-V-2"

    def score(self, template: str, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        acc, loss = accuracy_and_loss(self.train_logits(template, x), y)
        return acc, round(loss, 4)

    def search(self, x: torch.Tensor, y: torch.Tensor, proposer: Proposer, ctx: MethodContext) -> str:
        c = self.config
        descriptions, source = self.image_descriptions(y.cpu())
        history = [(self.initial_template, *self.score(self.initial_template, x, y), -1)]
        seen: set[str] = set()
        for step in range(c.steps):
            text = meta_prompt(history, descriptions, c.score_threshold, c.in_meta_prompt)
            request = Request(step, text, c.per_step, tuple((h[0], h[1]) for h in history), "<INS>{}</INS>", self.slot)
            for template in map(parse_response, proposer.propose(request)):
                digest = hashlib.md5(template.encode("utf-8")).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                if len(template) > c.max_characters or "INS" in template or not self.fits(template, self.classnames):
                    continue
                history.append((template, *self.score(template, x, y), step))
        best = sorted(history, key=lambda h: (h[1], -h[2]))[-1]
        self.info.update(
            image_descriptions=source,
            steps=c.steps,
            templates_scored=len(history),
            train_accuracy=best[1],
            train_loss=best[2],
        )
        return best[0]
