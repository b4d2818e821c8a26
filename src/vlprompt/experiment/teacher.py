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

TEACHER = "{results}/teacher/{tkey}/{dkey}/{shots}shot/seed{seed}"
TEACHER_FILES = ("metrics.json", "model.pt")
# The default teacher is a STAND-IN until the bigger pocket CLIP is shipped or built (docs/distillation.md): the
# experiment's own pocket_v2 CLIP, prompt-tuned. A config that distils should name a bigger teacher backbone.
DEFAULT_TEACHER = {
    "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": "pocket_v2", "quick_gelu": False},
    "method": "promptsrc",
    "overrides": {},
}


def teacher_block(cfg: dict) -> dict:
    """The config's ``teacher`` with its defaults."""
    block = {**copy.deepcopy(DEFAULT_TEACHER), **copy.deepcopy(cfg.get("teacher") or {})}
    block["backbone"] = {"quick_gelu": False, **block["backbone"]}
    return block


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


def teacher_dir(cfg: dict, dataset: str, shots: int | str, seed: int | str) -> Path:
    from vlprompt.data.registry import dataset_key

    return Path(
        TEACHER.format(
            results=cfg["results_root"],
            tkey=teacher_key(cfg, dataset, int(shots)),
            dkey=dataset_key(cfg, dataset),
            shots=shots,
            seed=seed,
        )
    )


def teacher_files(cfg: dict, dataset: str, shots: int | str, seed: int | str) -> list[Path]:
    return [teacher_dir(cfg, dataset, shots, seed) / name for name in TEACHER_FILES]


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
