"""The one small interface every method implements, and the hyperparameters every trainer shares."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip.backbone import Backbone, PromptedTextEncoder

registry: dict[str, type[Method]] = {}
# Method families in the order the report lists them (zero-shot first, as the papers' tables do): methods without
# training data (zero-shot CLIP, classifiers from class descriptions), with unlabelled data only (training-free), then
# the few-shot learners from the lightest to the heaviest, the test-time tuners last but one. A method inherits its
# parent's ``family``; a family not listed here comes after these, and so does a method without one.
FAMILIES = (
    "zero-shot",
    "class descriptions",
    "training-free",
    "linear probe",
    "adapter",
    "discrete prompt",
    "text prompt",
    "test-time",
    "deep prompt",
)


class MethodError(ValueError):
    """Unknown method or invalid hyperparameters; the message names them."""


def register(cls: type[Method]) -> type[Method]:
    if not cls.name or cls.name in registry:
        raise MethodError(f"method name {cls.name!r} missing or registered twice")
    registry[cls.name] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by all gradient-trained methods (CoOp's defaults).

    SGD with momentum 0.9 and weight decay 5e-4, cosine schedule stepped per epoch, the first
    ``warmup_epochs`` at the constant ``warmup_lr`` (Dassl's ConstantWarmupScheduler).
    """

    epochs: int = 200
    batch_size: int = 32
    lr: float = 0.002
    optimizer: str = "sgd"  # sgd | adamw | adam
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    min_steps_per_epoch: int = 1
    adam_eps: float = 1e-8  # AdamW's and Adam's epsilon (torch's default; Tip-Adapter-F uses 1e-4, HiCroPL 1e-3)
    lr_schedule: str = "epoch"  # epoch: cosine stepped per epoch (Dassl) | step: per iteration (CosineAnnealingLR)
    drop_last: bool = True  # steps per epoch N // batch (Dassl); False: ceil(N / batch), the last batch smaller


@dataclasses.dataclass
class MethodContext:
    """What a method is built from: the frozen backbone, the classes and the training data."""

    backbone: Backbone
    encoder: PromptedTextEncoder
    classnames: list[str]
    template: str
    device: torch.device
    train_features: torch.Tensor | None = None  # (V, N, D) augmented views of the few-shot images
    train_labels: torch.Tensor | None = None  # (N,)
    val_features: torch.Tensor | None = None  # (N_val, D)
    val_labels: torch.Tensor | None = None
    seed: int = 0
    dataset: str | None = None  # the dataset's registry name (per-dataset templates); None if unknown
    train_crop_scale_min: float | None = None  # random-resized-crop scale of the train views; None if unknown
    # More features from the feature bank, loaded on demand: load_split(name) -> (features, labels) or None when
    # the bank does not hold them. Names: "train_plain" (the few-shot training images, un-augmented, test
    # transform), "val_full" (the whole validation split), "test" (the test split); training classes only,
    # labels as train_labels.
    load_split: Callable[[str], tuple[torch.Tensor, torch.Tensor] | None] | None = None
    # Class descriptions (class name -> sentences, CuPL's format) for MSGCoOp, KAPT, ...; None: the description
    # store's file for ``dataset`` (vlprompt.data.descriptions), read when a method asks for it.
    descriptions: dict[str, list[str]] | None = None
    # Methods with ``reads_new_classnames`` (OGEN), under base2new: the new classes' NAMES, which the protocol lets
    # such a method see as text during training (never their images or labels); None: not given (other protocols,
    # other methods, or a config with `new_class_names: false`).
    unseen_classnames: list[str] | None = None
    # Methods with ``reads_unlabelled`` (TFUP): () -> (N, D) features of the target's unlabelled images, every image
    # of the split that the config's ``unlabelled`` option names, whatever its class, and no label (None elsewhere).
    unlabelled: Callable[[], torch.Tensor] | None = None
    # Methods with ``reads_multitask_prompt`` (MVLPT): the state the multitask stage trained on the config's
    # ``sources`` for this run's shots and seed, to start from (None elsewhere, and when building that stage).
    multitask_prompt: dict[str, torch.Tensor] | None = None
    # Methods with ``reads_teacher`` (PromptKD): the prompt-tuned teacher, a ``promptkd.Teacher`` (its class text
    # features and its logits on images); None elsewhere.
    teacher: Any | None = None
    # Cascaded deep-prompt methods (CasPL): the frozen boosting prompts that precede the method's learnable ones
    # (``caspl.Cascaded.boost_state``); None: zero prompts of the configured sizes (loaded from model.pt later).
    boosting_prompts: dict[str, torch.Tensor] | None = None
    # Methods with ``reads_meta_prompt`` (GRAM): the state the meta stage learned for this backbone (its context and
    # regulating function, ``source`` naming the file); None elsewhere and when a run does not need it.
    meta_prompt: dict[str, Any] | None = None
    # Methods with ``reads_label_images`` (LAPT): the folder of images per label that the config's
    # ``generated_images.<dataset>.by_label`` names (vlprompt.data.generated_images); None: the method's own stand-in.
    label_images: str | None = None
    # Methods with ``reads_test_views`` (DiffTPT): the folder of generated views per test image that the config's
    # ``generated_images.<dataset>.by_image`` names, recorded by the run (the bank holds its views); None: none named.
    generated_views: str | None = None

    @property
    def logit_scale(self) -> float:
        return float(self.backbone.model.logit_scale.exp().item())

    def templates(self, spec: str | None) -> list[str]:
        """The templates a method's Config field ``spec`` means on this dataset (see prompting.method_templates)."""
        from vlprompt.clip.prompting import method_templates

        return method_templates(spec, self.dataset, self.template)

    def training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(train_features, train_labels)``: (V, N, D) and (N,); a MethodError when the context has none."""
        if self.train_features is None or self.train_labels is None:
            raise MethodError("this method needs the training images' features and labels; the context has none")
        return self.train_features, self.train_labels

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``load_split(name)``, or None without a loader."""
        return None if self.load_split is None else self.load_split(name)

    def plain_training_data(self) -> tuple[torch.Tensor, torch.Tensor, str | None]:
        """(features, labels, note) of the few-shot training images un-augmented (the bank's ``plain`` part; note
        None), or, in a context without that part (unit tests), of the first augmented view with a note saying so."""
        plain = self.split("train_plain")
        if plain is not None:
            return plain[0], plain[1], None
        features, labels = self.training_data()
        return features[0], labels, "view 0 of the augmented views (no un-augmented features given)"


class Method(nn.Module):
    """A classifier over cached image features for a set of class names.

    Subclasses set the class attributes, a frozen ``Config`` dataclass (deriving from
    ``TrainConfig`` if gradient-trained) and implement ``forward`` (image features -> logits
    for the current classes). ``loss`` defaults to cross-entropy; ``fit`` is for closed-form
    methods (return True when the method trained itself and the SGD loop should be skipped).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    description: ClassVar[str] = ""
    family: ClassVar[str] = ""  # one of FAMILIES (inherited by subclasses); orders the report's tables
    Config: ClassVar[type] = TrainConfig
    needs_training: ClassVar[bool] = True
    supports_new_classes: ClassVar[bool] = True
    inputs: ClassVar[str] = "features"  # "features" (cached bank) or "images" (encoder in the loop)
    # image methods: independently augmented views of each training image per step (``loss`` gets (B, V, 3, H, W)
    # when V > 1: CoPrompt's consistency between a prompted and a frozen view)
    train_views: ClassVar[int] = 1
    # Further inputs a method declares; vlprompt.experiment.grid turns them into the run's input files (and the
    # DAG's jobs):
    reads_unlabelled: ClassVar[bool] = False  # the target's unlabelled images (config `unlabelled`; ctx.unlabelled)
    # per image, the mean and std of every block's tokens of the image tower (vlprompt.clip.layer_statistics),
    # appended to each feature row the method sees: (…, D + 2·L·W) wherever it gets image features
    reads_layer_statistics: ClassVar[bool] = False
    reads_test_views: ClassVar[bool] = False  # forward gets (B, V, D): V views per test image, view 0 the original
    reads_multitask_prompt: ClassVar[bool] = False  # starts from a prompt trained on the config's `sources`
    reads_new_classnames: ClassVar[bool] = False  # base2new: new classes' names, text only (unseen_classnames)
    reads_teacher: ClassVar[bool] = False  # a prompt-tuned bigger teacher CLIP (config `teacher`; ctx.teacher)
    reads_meta_prompt: ClassVar[bool] = False  # a meta stage keyed by backbone (GRAM; ctx.meta_prompt)
    # images per label from the folder the config's `generated_images.<dataset>.by_label` names, where it names one
    # (LAPT's training images; ctx.label_images; vlprompt.data.generated_images)
    reads_label_images: ClassVar[bool] = False
    reads_boosting_prompts: ClassVar[str] = (
        ""  # a method whose run's prompts are a frozen prefix (ctx.boosting_prompts)
    )
    # Runs of the method (seeds of one job) may train in one computation, the text tower once per step over all
    # their prompts (vlprompt.training.batched): its loss and evaluation draw no global randomness. Read from the
    # class itself, never inherited: a subclass that adds randomness must not batch on its parent's word.
    batchable: ClassVar[bool] = False

    def __init__(self, config: Any, ctx: MethodContext):
        super().__init__()
        self.config = config
        self.logit_scale = ctx.logit_scale
        self.new_classnames_given = len(ctx.unseen_classnames or [])  # recorded by every run (0: none)

    @classmethod
    def name_prompt_tokens(cls, config: Any, count: Callable[[str], int]) -> int | None:
        """The fewest tokens besides the class name in a prompt this method writes a class name into, SOS and EOS
        included (``count(text)``: the tokens of ``text`` alone); None when class names enter no prompt.

        The plan and the job's start check every class name against it (:func:`vlprompt.experiment.checks.
        class_name_problems`), so a name too long for the text encoder's context is one line before any work; the
        prompts themselves check exactly when they are built (``PromptLearner``, ``PatternPrompts``,
        ``text_classifier``). The default: the learnable text context (``n_ctx_text`` or ``n_ctx`` tokens, or
        ``ctx_init``'s words), else only SOS and EOS."""
        n = getattr(config, "n_ctx_text", getattr(config, "n_ctx", 0)) or 0
        init = getattr(config, "ctx_init", None)
        if init and n:
            n = min(int(n), count(init))
        return 2 + int(n)

    @classmethod
    def make_config(cls, overrides: dict | None = None):
        overrides = dict(overrides or {})
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            import difflib

            close = [m for u in unknown for m in difflib.get_close_matches(u, fields, n=1)]
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise MethodError(
                f"unknown hyperparameter(s) {unknown} for method {cls.name!r}; {hint}valid: {sorted(fields)}"
            )
        defaults = {f.name: f.default for f in dataclasses.fields(cls.Config)}
        return cls.Config(**{k: cls._typed(k, defaults[k], v) for k, v in overrides.items()})

    @classmethod
    def _typed(cls, name: str, default, value):
        """``value`` as the type of the preset's ``default`` (strings from ``--config`` parsed), or a
        MethodError naming the hyperparameter; fields whose preset is None or a string take any value."""
        if default is None or default is dataclasses.MISSING or value is None or isinstance(default, str):
            return value
        kind = type(default)
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
        elif kind in (int, float):  # true/false is no number here, although Python's bool is an int
            number = value
            if isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    pass
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                if kind is float or float(number).is_integer():
                    return kind(number)
        elif kind is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
        else:
            return value
        raise MethodError(
            f"method {cls.name!r}: hyperparameter {name!r} must be of type {kind.__name__} like its "
            f"preset {default!r}, got {value!r}"
        )

    @classmethod
    def multitask_seeds(cls, config: Any, seed: int) -> list[int]:
        """``reads_multitask_prompt``: the seeds of the multitask stages a run of ``seed`` starts from."""
        return [int(seed)]

    @classmethod
    def needs_meta_stage(cls, config: Any) -> bool:
        """``reads_meta_prompt``: whether a run with ``config`` reads the method's meta stage."""
        return cls.reads_meta_prompt

    @classmethod
    def meta_settings(cls, config: Any) -> dict:
        """``reads_meta_prompt``: the settings that define the meta stage (its artefact's key)."""
        return {}

    @classmethod
    def meta_train(cls, ctx: MethodContext, config: Any, image_features, captions: list[str], clusters) -> dict:
        """``reads_meta_prompt``: the meta stage's procedure on image-text pairs; returns ``{"state", "history"}``."""
        raise NotImplementedError(f"{cls.name} has no meta stage")

    def set_classes(self, classnames: list[str]) -> None:
        """Switch to another set of classes (evaluation on new classes)."""
        raise NotImplementedError(f"{self.name} cannot classify classes it was not trained on")

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, image_features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss = F.cross_entropy(self(image_features), labels)
        return loss, {"ce": loss.item()}

    def fit(self, ctx: MethodContext) -> bool:
        return False

    def after_training(self, ctx: MethodContext) -> None:
        """Called once after the SGD loop, before evaluation (e.g. Tip-Adapter-F searches alpha, beta)."""

    def run_info(self) -> dict:
        """What a run records about the fit beyond its hyperparameters (metrics.json ``method_info``): values
        chosen on data, the data they were chosen on, deviations from the reference forced by the inputs."""
        return {}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The learned part (what a trained artefact stores): parameters that require grad."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if k in names}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.trainable_state()) - set(state)
        if missing:
            raise MethodError(f"checkpoint lacks {sorted(missing)} for method {self.name!r}")
        self.load_state_dict(state, strict=False)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
