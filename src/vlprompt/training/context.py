"""What a method sees in a run: the frozen backbone, the training classes, the few-shot features and the inputs the
method declares it reads (unlabelled images, test views, a multitask prompt)."""

from __future__ import annotations

import json

import torch

from vlprompt.clip.backbone import Backbone, PromptedTextEncoder, load_backbone_from_config
from vlprompt.clip.bank_splits import BankSplits, UnlabelledFeatures
from vlprompt.clip.features import FeatureBank, pick_device
from vlprompt.clip.prompting import PromptFitError
from vlprompt.data import generated_images
from vlprompt.data.registry import get_dataset, split_path
from vlprompt.data.splits import read_fewshot, subsample_classes
from vlprompt.experiment import grid
from vlprompt.experiment.checks import class_name_problems
from vlprompt.experiment.config import ConfigError, method_settings, new_class_names_given
from vlprompt.experiment.meta_prompt import meta_dir, meta_key
from vlprompt.io import read_artefact_json
from vlprompt.methods import MethodContext, get_method
from vlprompt.training.loop import seed_everything
from vlprompt.training.records import load_model_state

_BACKBONES: dict = {}


def cached_backbone(cfg: dict, device: torch.device) -> Backbone:
    """Load the frozen backbone once per process (a job may train several runs; nothing modifies it)."""
    key = (json.dumps(cfg["backbone"], sort_keys=True), str(device))
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone_from_config(cfg, device)
    return _BACKBONES[key]


def start_job(cfg: dict, method_name: str, seed: int):
    """A job's start: one thread per job (``train.threads``), every generator seeded; returns (device, method class)."""
    torch.set_num_threads(cfg["train"]["threads"])
    seed_everything(seed)
    return pick_device(cfg["train"]["device"]), get_method(method_name)


def training_classes(cfg: dict, classes: dict) -> list[int]:
    """The labels a run trains on: the base classes under base2new (and under ood with ``ood.id_classes: base``),
    every class under the other protocols."""
    base_only = cfg["protocol"] == "base2new" or (
        cfg["protocol"] == "ood" and (cfg.get("ood") or {}).get("id_classes") == "base"
    )
    return classes["base"] if base_only else list(range(len(classes["classnames"])))


def fewshot_training_rows(cfg: dict, dataset: str, shots: int, seed: int, labels: list[int]) -> list:
    """The few-shot subset's training images of the classes ``labels`` ([relpath, label, name]): what an image-loop
    run trains on."""
    fewshot = read_fewshot(grid.fewshot_path(cfg, dataset, shots, seed), cfg["fewshot"].get("allow_fewer", False))
    return subsample_classes(fewshot["train"], labels)


def method_context(
    cfg: dict, dataset: str, classnames: list[str], device: torch.device, seed: int, template_of: str | None = None
) -> MethodContext:
    """The context every method starts from; ``template_of`` names the dataset whose hand-crafted template the
    prompts use (the target's under transfer, as the references build the model for the target)."""
    backbone = cached_backbone(cfg, device)
    target = template_of or dataset
    return MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=classnames,
        template=get_dataset(target).template,
        device=device,
        seed=seed,
        dataset=target,
    )


def check_class_names(cfg: dict, dataset: str, names: list[str], cls, backbone: Backbone) -> None:
    """A job's start: every class name the run writes into a prompt (the new classes' too: evaluated, or given by
    name) fits the text encoder's context, else the plan's one line (:class:`PromptFitError`)."""
    problems = class_name_problems(cfg, dataset, names, [cls.name], tokenizer=backbone.tokenizer)
    if problems:
        raise PromptFitError(problems[0])


def build_context(cfg: dict, dataset: str, cls, shots: int, seed: int, device: torch.device, for_training: bool = True):
    """The method's context for a run: backbone, training classes, few-shot features (if trained), and what the
    method declares it reads: the unlabelled images' features, the multitask prompt it starts from and the new
    classes' names under base2new (when ``for_training``; a trained model's evaluation loads its own state instead).

    Returns (context, feature bank, classes.json content). Training classes are the base classes
    under base2new and all classes under the other protocols.
    """
    bank = FeatureBank(grid.features_dir(cfg, dataset))
    classes = read_artefact_json(grid.classes_path(cfg, dataset))
    names = classes["classnames"]
    train_labels = training_classes(cfg, classes)
    ctx = method_context(cfg, dataset, [names[i] for i in train_labels], device, seed)
    check_class_names(cfg, dataset, names, cls, ctx.backbone)
    if cls.needs_training:
        fewshot = read_fewshot(grid.fewshot_path(cfg, dataset, shots, seed), cfg["fewshot"].get("allow_fewer", False))
        train_rows = subsample_classes(fewshot["train"], train_labels)
        val_rows = subsample_classes(fewshot["val"], train_labels)
        stem = grid.fewshot_features(cfg, dataset, shots, seed)
        subset_bank = FeatureBank(stem.parent)
        ctx.train_features = subset_bank.take(f"{stem.name}.train", [r[0] for r in train_rows])
        ctx.train_labels = torch.tensor([r[1] for r in train_rows])
        ctx.val_features = subset_bank.take(f"{stem.name}.val", [r[0] for r in val_rows])
        ctx.val_labels = torch.tensor([r[1] for r in val_rows])
        ctx.train_crop_scale_min = subset_bank.meta(f"{stem.name}.train").get("scale_min")
        if cls.reads_layer_statistics:  # each row followed by its image's (and view's) layer statistics
            stats = grid.fewshot_layer_statistics(cfg, dataset, shots, seed)
            ctx.train_features = with_layer_statistics(
                ctx.train_features, stats.parent, f"{stats.name}.train", [r[0] for r in train_rows]
            )
            ctx.val_features = with_layer_statistics(
                ctx.val_features, stats.parent, f"{stats.name}.val", [r[0] for r in val_rows]
            )
        ctx.load_split = BankSplits(
            bank, train_labels, train_rows, split_path(cfg, dataset), plain=(subset_bank, f"{stem.name}.plain")
        )
    if cls.reads_unlabelled:
        ctx.unlabelled = unlabelled_features(cfg, dataset, cls)
    if cls.reads_multitask_prompt and shots > 0 and for_training:
        seeds = cls.multitask_seeds(cls.make_config(method_settings(cfg, cls.name, dataset, shots)), seed)
        ctx.multitask_prompt = load_multitask_prompt(cfg, cls.name, shots, seeds, device)
    if cls.reads_meta_prompt and shots > 0 and for_training:
        ctx.meta_prompt = load_meta_prompt(cfg, cls.name, dataset, shots, device)
    if cls.reads_new_classnames and for_training and new_class_names_given(cfg):
        ctx.unseen_classnames = [names[i] for i in classes["new"]]  # names from classes.json; no image, no label
    if cls.reads_label_images:  # at evaluation too: the labels with images decide the negatives a model was built on
        found = generated_images.folder(cfg, dataset, "by_label")
        ctx.label_images = str(found) if found is not None else None
    if cls.reads_test_views:
        found = generated_images.folder(cfg, dataset, "by_image")
        ctx.generated_views = str(found) if found is not None else None
    return ctx, bank, classes


def unlabelled_features(cfg: dict, dataset: str, cls=None) -> UnlabelledFeatures:
    """The features, without labels, of ``dataset``'s images of the split the config's ``unlabelled`` names (each
    followed by its layer statistics for a method of class ``cls`` that reads them)."""
    split = cfg.get("unlabelled", "none")
    if split == "none":
        raise ConfigError("a method reads the target's unlabelled images but the config's `unlabelled` is none")
    stats = None
    if cls is not None and cls.reads_layer_statistics:
        stats = FeatureBank(grid.layer_statistics_dir(cfg, dataset))
    return UnlabelledFeatures(FeatureBank(grid.features_dir(cfg, dataset)), split, stats)


def with_layer_statistics(features: torch.Tensor, folder, name: str, relpaths: list[str]) -> torch.Tensor:
    """``features`` (…, N, D) of the images ``relpaths`` followed by their layer statistics from the bank
    ``folder/name`` (same views): (…, N, D + 2·L·W)."""
    stats = FeatureBank(folder).take(name, relpaths)
    if stats.shape[:-1] != features.shape[:-1]:
        raise ValueError(
            f"layer statistics {folder}/{name} hold {tuple(stats.shape)}, the features {tuple(features.shape)}; "
            "rebuild the layer-statistics bank (snakemake)"
        )
    return torch.cat([features, stats], dim=-1)


def test_view_features(
    cfg: dict, dataset: str, method: str, shots: int, rows: list, trained_on: str | None = None
) -> torch.Tensor:
    """(N, V, D) features of the test images ``rows`` in V views (view 0 the original; the generated views, if the
    method reads any, after the augmented ones), for ``reads_test_views``."""
    stem = grid.test_views_stem(cfg, dataset, method, shots, trained_on)
    views = FeatureBank(stem.parent).take(stem.name, [r[0] for r in rows])  # (V, N, D)
    generated = grid.generated_views_stem(cfg, dataset, method, shots, trained_on)
    if generated is not None:  # then the G generated views: (V + G, N, D)
        views = torch.cat([views, FeatureBank(generated.parent).take(generated.name, [r[0] for r in rows])])
    return views.transpose(0, 1).contiguous()


def eval_features(
    cfg: dict, bank: FeatureBank, rows: list, cls, dataset: str, shots: int, trained_on: str | None = None
) -> torch.Tensor:
    """What the method classifies for the test images ``rows``: their features, or their views."""
    if cls.reads_test_views:
        return test_view_features(cfg, dataset, cls.name, shots, rows, trained_on)
    features = bank.take("test", [r[0] for r in rows])
    if cls.reads_layer_statistics:
        return with_layer_statistics(features, grid.layer_statistics_dir(cfg, dataset), "test", [r[0] for r in rows])
    return features


def attach_multitask_prompt(ctx: MethodContext, cls, cfg: dict, dataset: str, shots: int, seed: int) -> None:
    """A training run of a ``reads_multitask_prompt`` method in the image loop (PVP): the multitask stages' state."""
    if cls.reads_multitask_prompt and shots > 0:
        seeds = cls.multitask_seeds(cls.make_config(method_settings(cfg, cls.name, dataset, shots)), seed)
        ctx.multitask_prompt = load_multitask_prompt(cfg, cls.name, shots, seeds, ctx.device)


def load_multitask_prompt(cfg: dict, method: str, shots: int, seeds: list[int], device: torch.device) -> dict:
    """The multitask stages' state for ``shots``, averaged over the stages of ``seeds`` (each checked against its
    record; the reference's avg_ckpt.py); ``source`` names the file, or the files averaged."""
    folders = [grid.multitask_dir(cfg, method, shots, s) for s in seeds]
    states = [load_model_state(folder, device)["state"] for folder in folders]
    state = {k: torch.stack([s[k] for s in states]).float().mean(0).to(states[0][k].dtype) for k in states[0]}
    files = [str(folder / "model.pt") for folder in folders]
    return {**state, "source": files[0] if len(files) == 1 else "mean of " + ", ".join(files)}


def load_meta_prompt(cfg: dict, method: str, dataset: str, shots: int, device: torch.device) -> dict | None:
    """The meta stage's state a run of ``method`` reads (checked against its record; rule ``train_meta_prompt``),
    ``source`` naming the file; None when the run needs no meta stage."""
    key = meta_key(cfg, method, dataset, shots)
    if key is None:
        return None
    folder = meta_dir(cfg, key)
    return {**load_model_state(folder, device)["state"], "source": str(folder / "model.pt")}
