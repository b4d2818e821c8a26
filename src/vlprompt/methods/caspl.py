"""CasPL: a deep-prompt method's learnable prompts cascaded after frozen boosting prompts.

Wu et al., "Cascade Prompt Learning for Vision-Language Model Adaptation", ECCV 2024. The repository
(megvii-research/CasPL, 8854e48) holds only its README: the training code is announced, not released, so this
is a documented reading of the paper and README, not a port.

Two stages. Stage 1 learns *boosting prompts* on the student CLIP by distilling a prompt-tuned bigger teacher
over unlabelled images of the domain (PromptKD, ``methods/promptkd.py``, is the same lab's released form of it).
Stage 2 trains the *adapting prompts* of any deep-prompt method (CoOp, MaPLe, PromptSRC, ...) cascaded after the
frozen boosting prompts, as that method trains. With B_j (n_b, d) the boosting prompts of block j and P_j
(n, d) the method's own, block j reads

    vision:  [CLS, patches, B_j, P_j]                        (deep_prompts.cascade)
    text:    [SOS, B_0, P_0, fixed words, CLASS, ., EOT]     (deep_prompts.prepend_context; B_j, P_j replace
                                                              positions 1 .. n_b + n in the deeper blocks)

B is a buffer: it never trains, and it is stored in ``model.pt`` beside P so the run can be evaluated alone.
With n_b = 0 the method is exactly its base (``tests/test_distillation.py`` checks logits, loss and gradients).

Assumptions (the code was not released): the boosting prompts have the adapting method's depth in each tower
(the cascade is per block), the sizes default to PromptKD's student (4 + 4 tokens), and the base method is
PromptSRC (the README's headline row, HM 82.69 against PromptSRC's 79.97). :func:`cascaded` builds the same
cascade over any deep-prompt method of the VPT-deep / IVLP family.
"""

from __future__ import annotations

import dataclasses

import torch

from vlprompt.clip import deep_prompts
from vlprompt.methods.base import Method, MethodContext, MethodError, normalize, register
from vlprompt.methods.ivlp import IVLP, IVLPConfig
from vlprompt.methods.promptkd import kd_loss
from vlprompt.methods.promptsrc import PromptSRC, PromptSRCConfig
from vlprompt.methods.vpt_deep import VPTDeep

BOOST_KEYS = ("boost_vision", "boost_text")


@dataclasses.dataclass(frozen=True)
class BoostingConfig(IVLPConfig):
    epochs: int = 20  # PromptKD's preset for its student (an assumption for CasPL's first stage)
    batch_size: int = 8
    lr: float = 0.005
    n_ctx_vision: int = 4
    n_ctx_text: int = 4
    depth_vision: int = 9
    depth_text: int = 9
    temperature: float = 1.0
    kd_weight: float = 1000.0


@register
class BoostingPrompts(IVLP):
    """CasPL's first stage: IVLP prompts of the student (both towers, its own text encoder) trained to match the
    teacher's logits, KD loss as PromptKD's (``promptkd.kd_loss``); no label is read. A ``caspl`` run of the same
    dataset, shots and seed cascades its prompts after these (:func:`boost_state`).

    Deviation (an option, off by default): the teacher runs on every augmented batch, unless ``teacher.logits`` is
    ``bank``: then its logits are read from the cached bank over V fixed views of each image, as PromptKD's
    (``methods/promptkd.py``), and the boosting prompts see those views."""

    name = "caspl_boost"
    paper = "Wu et al., Cascade Prompt Learning for Vision-Language Model Adaptation, ECCV 2024 (boosting stage)"
    description = "CasPL's boosting prompts: IVLP prompts distilled from a prompt-tuned bigger teacher's logits"
    Config = BoostingConfig
    reads_teacher = True

    def build_prompts(self, config, ctx: MethodContext, gen: torch.Generator) -> None:
        if ctx.teacher is None:
            raise MethodError("caspl_boost needs a prompt-tuned teacher: set the config's `teacher`")
        self.teacher = ctx.teacher
        super().build_prompts(config, ctx, gen)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        teacher = self.teacher.logits(images, self.classnames)
        loss = self.config.kd_weight * kd_loss(self(images), teacher, self.config.temperature)
        return loss, {"kd": loss.item()}


def boost_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``caspl_boost`` model's prompts as the frozen prefix of a cascade: ``boost_vision`` (J_v, n, d_v) and
    ``boost_text`` (J_t, n, d_t), the layer-0 context first."""
    text = [state["prompt_learner.ctx"][None]] + ([state["text_deep"]] if "text_deep" in state else [])
    return {"boost_vision": state["vision_ctx"], "boost_text": torch.cat(text)}


class Cascaded:
    """Mixin before a :class:`VPTDeep`-family method: frozen boosting prompts before its learnable ones."""

    reads_boosting_prompts = "caspl_boost"  # the run (same dataset, shots, seed) whose prompts are the prefix

    boost_vision: torch.Tensor  # (J_v, n_bv, d_v) frozen vision prompts of the first J_v blocks
    boost_text: torch.Tensor  # (J_t, n_bt, d_t) frozen text prompts: the layer-0 context, then the deeper blocks

    def build_prompts(self, config, ctx: MethodContext, gen: torch.Generator) -> None:
        super().build_prompts(config, ctx, gen)  # type: ignore[misc]
        model = self.frozen.model  # type: ignore[attr-defined]
        device = next(model.parameters()).device
        vision = getattr(self, "vision_ctx", None)
        depth_v = 0 if vision is None else vision.shape[0]
        depth_t = len(self.text_prompts()) if isinstance(self, IVLP) else 0
        shapes = {
            "boost_vision": (depth_v, config.boost_n_ctx_vision if depth_v else 0, deep_prompts.vision_width(model)),
            "boost_text": (depth_t, config.boost_n_ctx_text if depth_t else 0, deep_prompts.text_width(model)),
        }
        given = ctx.boosting_prompts or {}
        for key, shape in shapes.items():
            value = given.get(key, torch.zeros(shape))
            if tuple(value.shape) != shape:
                raise MethodError(
                    f"boosting prompts {key} have shape {tuple(value.shape)}, the method needs {shape}: train the "
                    "boosting stage with the same depths and boost_n_ctx_* as the cascaded method"
                )
            self.register_buffer(key, value.float().to(device))  # type: ignore[attr-defined]

    def vision_prompts(self) -> list[torch.Tensor]:
        return deep_prompts.cascade(self.boost_vision.unbind(0), super().vision_prompts())  # type: ignore[misc]

    def text_features(self) -> torch.Tensor:
        pl = getattr(self, "prompt_learner", None)
        if pl is None or self.boost_text.shape[1] == 0:
            return super().text_features()  # type: ignore[misc]
        embeddings, eot = deep_prompts.prepend_context(pl.prompts(), pl.eot, self.boost_text[0])
        deep = deep_prompts.cascade(self.boost_text[1:].unbind(0), self.text_prompts()[1:])  # type: ignore[attr-defined]
        return normalize(deep_prompts.encode_text(pl.encoder, embeddings, eot, deep))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = super().trainable_state()  # type: ignore[misc]
        return {**state, **{k: getattr(self, k).detach().cpu() for k in BOOST_KEYS}}

    def run_info(self) -> dict:
        info = super().run_info()  # type: ignore[misc]
        return {**info, "boosting_tokens": {"vision": self.boost_vision.shape[1], "text": self.boost_text.shape[1]}}


@dataclasses.dataclass(frozen=True)
class CasPLConfig(PromptSRCConfig):
    boost_n_ctx_vision: int = 4  # PromptKD's student: 4 vision and 4 text tokens (an assumption for CasPL)
    boost_n_ctx_text: int = 4


def cascade_config(base: type) -> type:
    """``base`` (a method's Config) with CasPL's two boosting sizes, PromptKD's student's 4 + 4 tokens."""
    fields = [(f, int, dataclasses.field(default=4)) for f in ("boost_n_ctx_vision", "boost_n_ctx_text")]
    return dataclasses.make_dataclass(f"Cascaded{base.__name__}", fields, bases=(base,), frozen=True)


def cascaded(base: type[Method], name: str | None = None, config: type | None = None) -> type[Method]:
    """``base`` (a VPT-deep / IVLP-family method) with frozen boosting prompts before its own, registered as
    ``caspl_<base>`` (or ``name``), its Config ``config`` (default: ``base``'s with the boosting sizes)."""
    if not issubclass(base, VPTDeep):
        raise MethodError(f"{base.name!r} has no deep prompts to cascade after boosting prompts")
    return register(
        type(
            f"Cascaded{base.__name__}",
            (Cascaded, base),
            {
                "name": name or f"caspl_{base.name}",
                "Config": config or cascade_config(base.Config),
                "paper": "Wu et al., Cascade Prompt Learning for Vision-Language Model Adaptation, ECCV 2024",
                "description": f"{base.name}'s prompts cascaded after frozen boosting prompts distilled from a "
                "bigger teacher",
                "batchable": False,
                "__doc__": f"{base.__name__} cascaded after frozen boosting prompts (CasPL).",
            },
        )
    )


CasPL = cascaded(PromptSRC, "caspl", CasPLConfig)
CasPLIVLP = cascaded(IVLP)
