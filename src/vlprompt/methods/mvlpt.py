"""MVLPT: multitask vision-language prompt tuning, text-prompt variant MCoOp (Shen et al., "Multitask
Vision-Language Prompt Tuning", WACV 2024, arXiv 2211.11720).

Reference implementation read (not copied): sIncerass/MVLPT at commit 6fa518b, trainers/mvlpt.py
(``MultitaskVLPromptLearner``, ``CustomCLIP.forward``, ``MVLPTCOOPDataManager``: the tasks' label spaces are
concatenated with an offset per task; ``forward_backward``), train.py (``extend_cfg``) and scripts/mvlpt/
main_mt_coopdata_cut.sh, main_single_coopdata_cut.sh and configs/trainers/MVLPT/vit_b16.yaml (MCoOp: CoOp's context,
16 tokens initialised N(0, 0.02²), the class name in the middle, SGD lr 0.002, batch 32, 200 epochs, cosine, one
constant warm-up epoch at 1e-5).

Two stages:

1. multitask (source) stage, once per shots and seed (rule ``train_multitask``,
   vlprompt.training.multitask.train_multitask):
   one CoOp context trained on the few-shot training data of every source dataset (the config's ``sources``) at
   once, with the cross-entropy over all the sources' classes (the reference's concatenated label space) and
   batches drawn from the union of their images;
2. target stage, every run: CoOp on the target's few-shot data, its context initialised from the multitask
   context (the reference's ``--model-dir``) instead of at random.

Sources never include a target dataset (the config is rejected). Under base-to-new the sources train on their
base classes, as every run does. Classes with the same name in several sources are one class here: the reference
concatenates the label spaces, which on sources that share class names (the pocket styles share all 64) gives copies
with identical prompts, so identical logits, that cap each copy's probability at 1/k. Deviations: the reference keeps
the epoch with the best validation accuracy (``TEST.FINAL_MODEL best_val``), here the last epoch; only the text
prompt variant (MCoOp) is built, not MVPT or MUPT.
"""

from __future__ import annotations

import dataclasses

import torch

from vlprompt.clip.prompting import PromptLearner
from vlprompt.methods.base import MethodContext, MethodError, register
from vlprompt.methods.coop import CoOp, CoOpConfig


@dataclasses.dataclass(frozen=True)
class MVLPTConfig(CoOpConfig):
    n_ctx: int = 16
    ctx_init: str | None = None  # N(0, 0.02²), as MCoOp
    class_token_position: str = "middle"
    source_epochs: int = 200  # epochs of the multitask stage (the rest of its settings: this config's)


def merge_sources(contexts: list[MethodContext]) -> MethodContext:
    """One training context over several source datasets: classes merged by name (first occurrence order), the
    training images of all sources with labels into the merged classes. Views must agree."""
    names: dict[str, int] = {}
    feats, labels = [], []
    for c in contexts:
        index = [names.setdefault(n, len(names)) for n in c.classnames]
        features, train_labels = c.training_data()
        feats.append(features)
        labels.append(torch.tensor(index)[train_labels])
    views = {f.shape[0] for f in feats}
    if len(views) != 1:
        raise MethodError(f"mvlpt: the sources' feature banks hold different numbers of views {sorted(views)}")
    first = contexts[0]
    return dataclasses.replace(
        first,
        classnames=list(names),
        train_features=torch.cat(feats, dim=1),
        train_labels=torch.cat(labels),
        val_features=None,
        val_labels=None,
        dataset=None,
        load_split=None,
        multitask_prompt=None,
    )


@register
class MVLPT(CoOp):
    name = "mvlpt"
    paper = "Shen et al., Multitask Vision-Language Prompt Tuning, WACV 2024"
    description = "CoOp started from a context trained on several source datasets at once (MCoOp)"
    Config = MVLPTConfig
    prompt_learner: PromptLearner  # CoOp's, whose context this method reads
    reads_multitask_prompt = True

    def __init__(self, config: MVLPTConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.initialised_from = None
        if ctx.multitask_prompt is not None:
            state = ctx.multitask_prompt
            if state["prompt_learner.ctx"].shape != self.prompt_learner.ctx.shape:
                raise MethodError(
                    f"mvlpt: the multitask context has shape {tuple(state['prompt_learner.ctx'].shape)}"
                    f", this run's {tuple(self.prompt_learner.ctx.shape)} (n_ctx changed?)"
                )
            with torch.no_grad():
                self.prompt_learner.ctx.copy_(state["prompt_learner.ctx"])
            self.initialised_from = state.get("source", "the multitask prompt given")

    @classmethod
    def source_config(cls, config: MVLPTConfig) -> MVLPTConfig:
        """The multitask stage's settings: this config with ``source_epochs`` epochs."""
        return dataclasses.replace(config, epochs=config.source_epochs)

    def run_info(self) -> dict:
        return {"initialised_from": self.initialised_from or "random (no multitask prompt given)"}
