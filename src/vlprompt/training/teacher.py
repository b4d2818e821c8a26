"""The teacher of the distillation methods: its method (rule ``train_teacher``), the teacher a run reads, the check
that it beats the student.

A teacher is an ordinary run of the config's ``teacher.method`` (PromptSRC) on the teacher backbone
(:func:`vlprompt.experiment.teacher.teacher_config`): the same few-shot subset of the training classes, the same
image loop and evaluation, written to the teacher's keyed folder. A ``reads_teacher`` method's run loads it as a
:class:`~vlprompt.methods.promptkd.Teacher` (its class text features and its logits, frozen).
"""

from __future__ import annotations

from pathlib import Path

from vlprompt.experiment import grid
from vlprompt.experiment import teacher as teacher_paths
from vlprompt.experiment.config import ConfigError, method_settings
from vlprompt.io import read_artefact_json
from vlprompt.methods import get_method
from vlprompt.methods.caspl import boost_state
from vlprompt.methods.promptkd import Teacher
from vlprompt.training.context import method_context
from vlprompt.training.records import load_model_state


def teacher_method(cfg: dict) -> str:
    """The method that prompt-tunes the teacher (rule ``train_teacher`` runs it through ``image_runs.run`` on
    :func:`~vlprompt.experiment.teacher.teacher_config`): a method with the image encoder in the loop."""
    name = teacher_paths.teacher_block(cfg)["method"]
    if get_method(name).inputs != "images":
        raise ConfigError(f"teacher.method {name!r} is not a deep-prompt method; use promptsrc or ivlp")
    return name


def load_teacher(cfg: dict, dataset: str, shots: int, seed: int, classnames: list[str], device) -> Teacher:
    """The trained teacher of (``dataset``, ``shots``, ``seed``), frozen, for ``classnames``."""
    block, tcfg = teacher_paths.teacher_block(cfg), teacher_paths.teacher_config(cfg)
    cls = get_method(block["method"])
    mcfg = cls.make_config(method_settings(tcfg, block["method"], dataset, shots))
    method = cls(mcfg, method_context(tcfg, dataset, classnames, device, seed)).to(device)
    method.load_trainable_state(load_model_state(teacher_paths.teacher_dir(cfg, dataset, shots, seed), device)["state"])
    return Teacher(method)


def headline(metrics: dict) -> float:
    """The accuracy a run is compared by: the harmonic mean of base and new under base2new, else all classes."""
    return float(metrics["hm"] if "hm" in metrics else metrics["all_acc"])


def check_teacher_beats_student(teacher_metrics: list[Path], student_zero_shot: list[Path]) -> dict:
    """The teacher's test accuracy (:func:`headline`) against the student backbone's zero-shot accuracy, per dataset
    (metrics.json files of the teacher runs and of the experiment's ``zeroshot`` runs). Returns ``{dataset: {"teacher",
    "student_zero_shot", "margin"}}``; a ConfigError when the teacher is not better on every dataset, since a
    distillation result from a teacher no better than the student shows nothing."""
    teacher: dict[str, list[float]] = {}
    for path in teacher_metrics:
        m = read_artefact_json(path)
        teacher.setdefault(m["dataset"], []).append(headline(m))
    student = {m["dataset"]: headline(m) for m in map(read_artefact_json, student_zero_shot)}
    out, worse = {}, []
    for dataset, accs in sorted(teacher.items()):
        if dataset not in student:
            raise ConfigError(f"no zero-shot run of the student on {dataset}: add zeroshot to the config's methods")
        mean = sum(accs) / len(accs)
        out[dataset] = {"teacher": mean, "student_zero_shot": student[dataset], "margin": mean - student[dataset]}
        if mean <= student[dataset]:
            worse.append(f"{dataset} ({mean:.1f} <= {student[dataset]:.1f})")
    if worse:
        raise ConfigError(
            f"the teacher is not better than the student's zero-shot CLIP on {', '.join(worse)}: distillation "
            "from it shows nothing; give `teacher.backbone` a bigger pretrained CLIP (docs/distillation.md)"
        )
    return out


def attach_teacher(ctx, cls, cfg: dict, dataset: str, shots: int, seed: int) -> None:
    """Give a distillation method's context its trained teacher (``reads_teacher``) or the boosting prompts of the
    run it cascades after (``reads_boosting_prompts``); no-op for other methods."""
    if cls.reads_teacher:
        ctx.teacher = load_teacher(cfg, dataset, shots, seed, ctx.classnames, ctx.device)
    if cls.reads_boosting_prompts:
        folder = grid.Run(dataset, cls.reads_boosting_prompts, shots, seed).dir(cfg)
        ctx.boosting_prompts = boost_state(load_model_state(folder, ctx.device)["state"])


__all__ = ["attach_teacher", "check_teacher_beats_student", "headline", "load_teacher", "teacher_method"]
