"""LLM-BBO: language models as black-box optimizers (Liu et al., "Language Models as Black-Box Optimizers for
Vision-Language Models", CVPR 2024, arXiv 2309.05950).

Reference implementation read (not copied): shihongl1998/LLM-as-a-blackbox-optimizer at commit 6612c84:
``auto_prompt_image_classification.py`` (the loop), ``prompt_pool.py`` (``get_message``), ``utils.py``
(``getTopBotK``, ``validate_message``, ``eval``).

Hill-climbing through chat on the 1-shot training accuracy, the vision-language model a black box (no logits):

    P_0 = initial templates, each scored: acc(T) = training accuracy of zero-shot CLIP with T
    iteration t: rank P by acc (descending, ties in insertion order); good = the first k, bad = the last k (reversed)
            message = get_message("method_1", good, bad): "... give me 1 better template ..."
            response -> the lines "- <template>" with a "{}" that formats; tried again (up to 15 calls) while none
            each new template scored and added to P
    result: the first of P ranked by acc

Defaults from the script's arguments: 10 iterations, temperature 1, k = 3 (``template_pool_size``), 1 template a
query, scored on the training split. The script's default ``prompt_method`` ("good_bad_better") has no branch in
``get_message``; "method_1", the good/bad/better message the paper describes, is its only message, and
:func:`message` is that string for the same lists (a fixture, ``tests/data/language_model_fixtures.json``).

Deviations, each forced or documented:
- Initial templates: the reference samples 80 LAION-COCO captions; on the pocket world the rule's template pool
  (``vlprompt.data.descriptions.pocket_template_pool``, the words of the pocket world's captions and styles) stands
  in; elsewhere the store's ``templates/<Dataset>.json``.
- The reference also scores every template on the validation and test splits (for its plots); here only the
  training split is read.
- An iteration whose 15 calls give no valid template is skipped (the reference stops with an error).
"""

from __future__ import annotations

import dataclasses

import torch

from vlprompt.data.descriptions import template_pool
from vlprompt.methods.base import MethodContext, register
from vlprompt.methods.proposers import Proposer, Request
from vlprompt.methods.template_search import TemplateSearch, TemplateSearchConfig, accuracy_and_loss


def message(good: list[str], bad: list[str], count: int = 1) -> str:
    """The reference's good/bad/better message ("method_1") for the good and bad templates."""
    good_str, bad_str = "\n".join(good), "\n".join(bad)
    return (
        "\nHi ChatGPT, I have two lists of templates: one with good templates and the other with bad templates. "
        "There are characteristics that make a template good or bad. Based on these characteristics, give me "
        f"{count} better template. \n"
        f"Here is the list of good templates:\n{good_str}\n\n"
        f"Here is the list of bad templates: \n{bad_str}\n\n"
        "Here are my requirements:\n"
        "- Please only reply the template.\n"
        "- The template should be less than 15 words.\n"
        "- The template should have similar structure to the above template.\n"
        "- Only the template should start with '- ' in a separate line.    \n"
    )


def top_bottom(ranked: list[str], k: int) -> tuple[list[str], list[str]]:
    """The first k and the last k (last first) of the ranked templates (``getTopBotK`` without its random list,
    which method_1 does not show)."""
    return [ranked[i] for i in range(k)], [ranked[-i - 1] for i in range(k)]


def valid_templates(response: str) -> list[str] | None:
    """The templates of a response (``validate_message``): lines starting with "- "; None if any has no "{}" or does
    not format, or if there is none."""
    templates = []
    for line in response.splitlines():
        if line.startswith("- "):
            template = line[2:]
            if "{}" not in template:
                return None
            try:
                template.format("test")
            except (IndexError, KeyError, ValueError):
                return None
            templates.append(template)
    return templates or None


@dataclasses.dataclass(frozen=True)
class LLMBBOConfig(TemplateSearchConfig):
    steps: int = 10  # num_iters
    pool_size: int = 3  # template_pool_size: k good and k bad templates in the message
    per_query: int = 1  # num_templates_from_gpt
    tries: int = 15  # calls per iteration until a valid response


@register
class LLMBBO(TemplateSearch):
    name = "llm_bbo"
    paper = "Liu et al., Language Models as Black-Box Optimizers for Vision-Language Models, CVPR 2024"
    description = "hill-climbing through chat: good and bad templates by 1-shot accuracy, ask for a better one"
    Config = LLMBBOConfig

    def search(self, x: torch.Tensor, y: torch.Tensor, proposer: Proposer, ctx: MethodContext) -> str:
        c = self.config
        initial, source = template_pool(self.dataset)
        scores: dict[str, float] = {}
        for template in initial:
            if self.fits(template, self.classnames):
                scores[template] = accuracy_and_loss(self.train_logits(template, x), y)[0] / 100
        calls, skipped = 0, 0
        for _ in range(c.steps):
            ranked = [t for t, _ in sorted(scores.items(), key=lambda kv: kv[1], reverse=True)]
            k = min(c.pool_size, len(ranked))
            text = message(*top_bottom(ranked, k), c.per_query)
            new = None
            for _ in range(c.tries):
                history = tuple(scores.items())
                response = proposer.propose(Request(calls, text, 1, history, "- {}", self.slot))[0]
                calls += 1
                new = valid_templates(response.strip())
                if new is not None:
                    break
            if new is None:
                skipped += 1
                continue
            for template in new:
                if template not in scores and self.fits(template, self.classnames):
                    scores[template] = accuracy_and_loss(self.train_logits(template, x), y)[0] / 100
        best = max(scores.items(), key=lambda kv: kv[1])  # the first of the ranking (max keeps the first of ties)
        self.info.update(
            initial_templates=source,
            steps=c.steps,
            calls=calls,
            steps_skipped=skipped,
            templates_scored=len(scores),
            train_accuracy=round(100 * best[1], 4),
        )
        return best[0]
