"""Which methods distil a teacher, the config's ``teacher`` block with its defaults, and its one-line problems.

Kept apart from :mod:`vlprompt.experiment.teacher` (the teacher's paths and keys) so that the config checks can
import it without importing the config module back.
"""

from __future__ import annotations

import copy

# The default teacher is a STAND-IN until the bigger pocket CLIP is shipped or built (docs/distillation.md): the
# experiment's own pocket_v2 CLIP, prompt-tuned. A config that distils should name a bigger teacher backbone.
DEFAULT_TEACHER = {
    "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": "pocket_v2", "quick_gelu": False},
    "method": "promptsrc",
    "overrides": {},
    # where a student's teacher logits come from (vlprompt.training.teacher_logits): "per_batch", the frozen teacher
    # run on every augmented batch (the reference's); "bank", read from the cached bank of its logits over
    # `bank_views` fixed views of each training image (rule teacher_logits); "fixed_views", the teacher run per
    # batch on those same fixed views (what the bank replays: the check that the two train the same student)
    "logits": "per_batch",
    "bank_views": 8,  # V; an assumption (the reference has no bank): 8 views of each image, drawn anew each epoch
}

LOGITS_SOURCES = ("per_batch", "bank", "fixed_views")


def teacher_block(cfg: dict) -> dict:
    """The config's ``teacher`` with its defaults."""
    block = {**copy.deepcopy(DEFAULT_TEACHER), **copy.deepcopy(cfg.get("teacher") or {})}
    block["backbone"] = {"quick_gelu": False, **block["backbone"]}
    return block


def distilling_methods(cfg: dict) -> list[str]:
    """The experiment's methods that learn from the teacher: ``reads_teacher`` ones (PromptKD) and those that
    cascade after the prompts of one (CasPL after ``caspl_boost``)."""
    from vlprompt.methods import MethodError, get_method

    def distils(name: str) -> bool:
        try:
            cls = get_method(name)
        except MethodError:
            return False
        return cls.reads_teacher or bool(cls.reads_boosting_prompts and distils(cls.reads_boosting_prompts))

    return [m for m in cfg["methods"] if distils(m)]


def teacher_problems(cfg: dict, distilling: list[str]) -> list[str]:
    """One line per problem of an experiment with the ``reads_teacher`` methods ``distilling``: the teacher's
    check needs the student's zero-shot runs, its method must train prompts in the image loop, and a transfer
    protocol has no teacher for the targets' classes."""
    from vlprompt.methods import MethodError, get_method

    if not distilling:
        return []
    lines = []
    if "zeroshot" not in cfg["methods"]:
        lines.append(
            f"{', '.join(distilling)} distil(s) a teacher that must beat the student's zero-shot CLIP before the "
            "report: add zeroshot to `methods`"
        )
    method = teacher_block(cfg)["method"]
    try:
        if get_method(method).inputs != "images":
            lines.append(f"teacher.method {method!r} is not a deep-prompt method: use promptsrc or ivlp")
    except MethodError as err:
        lines.append(f"teacher.method: {err}")
    if cfg["protocol"] in ("crossdataset", "domain_generalization"):
        lines.append(
            f"{', '.join(distilling)} cannot be evaluated on `targets` yet (no teacher for their classes): use "
            "protocol base2new or fewshot"
        )
    return lines
