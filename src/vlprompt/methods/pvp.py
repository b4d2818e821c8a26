"""PVP: Pre-trained Visual Parameter-Efficient Tuning (Song et al., "PVP: Pre-trained Visual Parameter-Efficient
Tuning", arXiv 2304.13639), with VPT-deep prompts in CLIP's image encoder.

No official code was found: a reading of the paper's abstract and outline, every open point an assumption named
here and in the method catalogue. PVP's idea: parameter-efficient modules tuned from a random initialisation learn
badly from a few shots, so pre-train them on a large source task first and tune them on the target from there.

Two stages, on the multitask machinery that MVLPT uses (vlprompt.training.multitask), here in the image loop:

1. source stage, once per shots and seed (rule ``train_multitask``): VPT-deep's prompts (``vision_ctx``, one
   (n, d_v) set per block) trained on the few-shot images of every source dataset at once (the config's
   ``sources``; classes merged by name, each source's training classes), by VPT-deep's loss and loop with
   ``source_epochs`` epochs;
2. target stage, every run: VPT-deep on the target's few-shot images, its prompts initialised from the source
   stage's instead of N(0, 0.02²).

Exact reduction: with ``source_epochs: 0`` the source stage writes the prompts VPT-deep draws for the same seed
(its initialisation does not depend on the classes), so a PVP run equals the ``vpt_deep`` run with the same
settings, model.pt and metrics (tests/test_pvp.py).

Assumptions: the source task is the config's ``sources`` at the run's shots (the paper pre-trains on a large
labelled source; the pocket world's other styles stand in, as MVLPT's sources do); the head is CLIP's fixed
hand-crafted text classifier (VPT-deep's, in place of the paper's linear head); only VPT prompts are pre-trained
(not LoRA or adapters); ``source_epochs`` (the preset's 5 epochs of VPT-deep) and ``source_seeds`` (each run reads
the stage of its own seed) are this project's choices, not tuned.
"""

from __future__ import annotations

import dataclasses

import torch

from vlprompt.methods.base import MethodContext, MethodError, register
from vlprompt.methods.vpt_deep import VPTDeep, VPTDeepConfig


@dataclasses.dataclass(frozen=True)
class PVPConfig(VPTDeepConfig):
    source_epochs: int = 5  # epochs of the source stage (assumption: VPT-deep's preset); 0: no source training
    source_seeds: tuple[int, ...] = ()  # stages whose prompts are averaged; (): the stage of the run's own seed


@register
class PVP(VPTDeep):
    name = "pvp"
    paper = "Song et al., PVP: Pre-trained Visual Parameter-Efficient Tuning, arXiv 2304.13639"
    description = "VPT-deep started from prompts pre-trained on the config's source datasets in the image loop"
    Config = PVPConfig
    reads_multitask_prompt = True

    def __init__(self, config: PVPConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        self.initialised_from = None
        state = ctx.multitask_prompt
        if state is not None:
            given = state.get("vision_ctx")
            if given is None or self.vision_ctx is None or given.shape != self.vision_ctx.shape:
                shape = None if given is None else tuple(given.shape)
                mine = None if self.vision_ctx is None else tuple(self.vision_ctx.shape)
                raise MethodError(
                    f"pvp: the source stage's prompts have shape {shape}, this run's {mine} (n_ctx_vision or "
                    "depth_vision changed?)"
                )
            with torch.no_grad():
                self.vision_ctx.copy_(given)
            self.initialised_from = state.get("source", "the source prompts given")

    @classmethod
    def multitask_seeds(cls, config: PVPConfig, seed: int) -> list[int]:
        return [int(s) for s in config.source_seeds] or [int(seed)]

    @classmethod
    def source_config(cls, config: PVPConfig) -> PVPConfig:
        """The source stage's settings: this config with ``source_epochs`` epochs."""
        return dataclasses.replace(config, epochs=config.source_epochs)

    def run_info(self) -> dict:
        return {"initialised_from": self.initialised_from or "random (no source prompts given)"}
