"""The teacher of the distillation methods (``Method.reads_teacher``: PromptKD): what it is and where it lives.

The config's ``teacher`` block names a bigger CLIP (``backbone``, the same keys as the experiment's), the method
that prompt-tunes it on the few-shot labelled training classes (``method``, PromptSRC as in PromptKD) and that
method's hyperparameters (``overrides``). A teacher is trained by the rule ``train_teacher`` once per dataset ×
shots × seed, as an ordinary run of that method on the teacher backbone (:func:`teacher_config`), and shared by
every experiment that asks for the same one: its folder is keyed by everything that defines it,

    <results>/teacher/<teacher backbone key>__<method>-<settings hash>/<dataset key>/<shots>shot/seed<seed>/

with ``model.pt`` (its prompts) and ``metrics.json`` (its accuracy, which the distillation report compares with
the student backbone's zero-shot accuracy). Distillation shows nothing unless the teacher is the better model:
:func:`vlprompt.training.teacher.check_teacher_beats_student` refuses a report where it is not.
"""

from __future__ import annotations

import copy
from pathlib import Path

from vlprompt.experiment.config import backbone_key, config_hash, method_settings
from vlprompt.experiment.distillation import DEFAULT_TEACHER, distilling_methods, teacher_block  # noqa: F401

TEACHER = "{results}/teacher/{tkey}/{dkey}/{shots}shot/seed{seed}"
TEACHER_FILES = ("metrics.json", "model.pt")
# the teacher-logits bank of a teacher's run: its logits over V fixed views of the run's training images
TEACHER_LOGITS = "{results}/teacher_logits/{tkey}/{dkey}/{shots}shot/seed{seed}/{views}/logits"


def teacher_config(cfg: dict) -> dict:
    """``cfg`` as the experiment of its teacher: the teacher backbone, and the teacher method's overrides."""
    block = teacher_block(cfg)
    out = copy.deepcopy(cfg)
    out["backbone"] = block["backbone"]
    out["method_overrides"] = {block["method"]: block["overrides"]}
    return out


def teacher_key(cfg: dict, dataset: str, shots: int) -> str:
    """The teacher's identity: its backbone's key, its method and a hash of its settings for this run."""
    block, tcfg = teacher_block(cfg), teacher_config(cfg)
    settings = method_settings(tcfg, block["method"], dataset, int(shots))
    relevant = {k: cfg.get(k) for k in ("protocol", "fewshot", "pocket")}
    relevant["features"] = {k: (cfg.get("features") or {}).get(k) for k in ("crop_scale_min",)}
    return f"{backbone_key(tcfg)}__{block['method']}-{config_hash({**relevant, 'method': settings})}"


def teacher_path(pattern: str, cfg: dict, dataset: str, shots: int | str, seed: int | str, **more: str) -> Path:
    """``pattern`` (:data:`TEACHER`, :data:`TEACHER_LOGITS`) for the teacher of (``dataset``, ``shots``, ``seed``)."""
    from vlprompt.data.registry import dataset_key

    dkey, tkey = dataset_key(cfg, dataset), teacher_key(cfg, dataset, int(shots))
    return Path(pattern.format(results=cfg["results_root"], tkey=tkey, dkey=dkey, shots=shots, seed=seed, **more))


def teacher_dir(cfg: dict, dataset: str, shots: int | str, seed: int | str) -> Path:
    return teacher_path(TEACHER, cfg, dataset, shots, seed)


def teacher_files(cfg: dict, dataset: str, shots: int | str, seed: int | str) -> list[Path]:
    return [teacher_dir(cfg, dataset, shots, seed) / name for name in TEACHER_FILES]


def teacher_targets(cfg: dict) -> list[Path]:
    """Every teacher the experiment's distilling methods need (one per dataset × shots × seed)."""
    if not distilling_methods(cfg):
        return []
    return [
        path
        for dataset in cfg["datasets"]
        for shots in cfg["shots"]
        for seed in cfg["seeds"]
        for path in teacher_files(cfg, dataset, shots, seed)
    ]


def logits_source(cfg: dict) -> str:
    """Where the students' teacher logits come from: ``per_batch``, ``bank`` or ``fixed_views`` (``teacher.logits``)."""
    return teacher_block(cfg)["logits"]


def logits_views_key(cfg: dict) -> str:
    """The fixed views' identity: V (``teacher.bank_views``), the crop scale and augmentation format of the training
    views (``grid.views_key``'s recipe), and the student backbone, whose preprocessing the views are in."""
    from vlprompt.clip.features import FORMAT

    views, crop = teacher_block(cfg)["bank_views"], cfg["features"]["crop_scale_min"]
    return f"views{views}_crop{crop:g}_f{FORMAT}__{backbone_key(cfg)}"  # grid.views_key's form (grid imports this)


def teacher_logits_stem(cfg: dict, dataset: str, shots: int | str, seed: int | str) -> Path:
    """``<stem>.npy`` (V, N, C) and ``<stem>.json``: the teacher's logits over the fixed views of the training images
    of (dataset, shots, seed), keyed by the teacher (:func:`teacher_key`), the dataset, shots, seed and the views."""
    return teacher_path(TEACHER_LOGITS, cfg, dataset, shots, seed, views=logits_views_key(cfg))


def teacher_logits_files(cfg: dict, dataset: str, shots: int | str, seed: int | str) -> list[Path]:
    """The bank a student reads with ``teacher.logits`` ``bank`` (none otherwise)."""
    if logits_source(cfg) != "bank":
        return []
    stem = teacher_logits_stem(cfg, dataset, shots, seed)
    return [Path(f"{stem}.npy"), Path(f"{stem}.json")]
