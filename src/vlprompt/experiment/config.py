"""Experiment config: load, fill defaults, validate against the JSON Schema, and hash.

The schema (``schemas/config.schema.yaml``) is the single description of every key; Snakemake's
``validate`` and this module read the same file, so the CLI and the DAG reject the same mistakes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from vlprompt.experiment.overrides import OverridesError, check_method_overrides, method_settings, override_rows  # noqa: F401
from vlprompt.experiment.schema import SCHEMA_PATH, _fill_defaults, fill_defaults, load_schema  # noqa: F401
from vlprompt.io import config_hash


class ConfigError(ValueError):
    """The config is invalid; the message names the key and what is expected."""


def coerce_strings(value: Any, schema: dict | None = None) -> Any:
    """Values given as ``snakemake --config key=value`` arrive as strings (Snakemake parses them with
    YAML's BaseLoader: ``shots=[1,4,16]`` is ``['1', '4', '16']``). Convert the strings that the schema
    types as integer, number or boolean; leave everything else for :func:`validate` to judge."""
    schema = load_schema() if schema is None else schema
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: coerce_strings(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce_strings(v, schema.get("items", {})) for v in value]
    if isinstance(value, str):
        for kind, parse in (("integer", int), ("number", float)):
            if kind in types:
                try:
                    return parse(value)
                except ValueError:
                    pass
        if "boolean" in types and value.lower() in ("true", "false"):
            return value.lower() == "true"
    return value


def user_dataset_problems(cfg: dict) -> list[str]:
    """Each user dataset's entry beyond the schema (layout-specific keys, ratios), its root there, its name new: one
    line per problem."""
    from vlprompt.data import user
    from vlprompt.data.registry import list_datasets

    lines = []
    for name in user.entries(cfg):
        if name in list_datasets():
            lines.append(f"user_datasets: {name!r} is a registered dataset; give your dataset another name")
            continue
        try:
            user.settings(cfg, name)
            user.root(cfg, name)
        except user.UserDatasetError as err:
            lines.append(str(err))
    return lines


def validate(cfg: dict[str, Any], check_names: bool = True, names_checked: bool = False) -> dict[str, Any]:
    """Return a copy of ``cfg`` with defaults filled in, or raise :class:`ConfigError` with one line per problem
    (:mod:`vlprompt.experiment.checks`: the schema, then, with ``check_names``, the user datasets and the
    registries' names; the config's user datasets are then registered for lookups by name). ``names_checked``:
    the registries' names (methods, datasets, method overrides) were checked already, by the plan that wrote
    this config (:func:`load_config`'s ``planned``); the user datasets are checked and registered all the same."""
    from vlprompt.data.registry import use_config
    from vlprompt.experiment.checks import name_problems, schema_problems

    problems = schema_problems(cfg)
    if problems:
        raise ConfigError("\n".join(problems))
    cfg = fill_defaults(cfg)
    if check_names:
        problems = user_dataset_problems(cfg)
        if problems:
            raise ConfigError("\n".join(problems))
        use_config(cfg)
        problems = [] if names_checked else name_problems(cfg)
        if problems:
            raise ConfigError("\n".join(problems))
    return cfg


def written_by_the_plan(path: Path, cfg: Any) -> bool:
    """Whether ``path`` is a config the plan resolved and pinned (``configs/<hash>.json``, written by
    :func:`vlprompt.pipeline.workflow.resolve_config` after :func:`validate` passed): its name is its content's
    hash."""
    return path.suffix == ".json" and path.parent.name == "configs" and path.stem == config_hash(cfg)


def load_config(path: str | Path, check_names: bool = True, planned: bool = False) -> dict[str, Any]:
    """The config in ``path`` (YAML, or an experiment's resolved JSON), validated (:func:`validate`).

    ``planned``: the config a job of a running pipeline reads (``$VLPROMPT_CONFIG``). When the file is the one
    the plan pinned (:func:`written_by_the_plan`), the plan checked its names with this same code, and they are
    not checked again: that check imports every method (torch, open_clip), seconds of each job's start-up that
    jobs which train nothing (prepare, split, aggregate) need not pay. Any other file is checked in full."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        cfg = yaml.safe_load(f) if path.suffix in (".yaml", ".yml") else __import__("json").load(f)
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(cfg).__name__}")
    try:
        return validate(cfg, check_names=check_names, names_checked=planned and written_by_the_plan(path, cfg))
    except ConfigError as err:
        raise ConfigError("\n".join(f"{path}: {line}" for line in str(err).split("\n"))) from None


def backbone_key(cfg: dict) -> str:
    """Filesystem-safe backbone identity used in feature-bank paths.

    For a local weights file it includes a hash of the file, so replacing the weights
    invalidates the cached features; for an open_clip tag the tag names the weights.
    """
    from vlprompt.clip.backbone import is_local_file, resolve_pretrained

    b = cfg["backbone"]
    pretrained = resolve_pretrained(b["pretrained"])
    if is_local_file(pretrained) and Path(pretrained).is_file():
        stat = Path(pretrained).stat()
        tag = (
            Path(pretrained).stem
            + "-"
            + _file_sha256(str(Path(pretrained).resolve()), stat.st_size, stat.st_mtime_ns)[:8]
        )
    else:
        tag = str(pretrained)
    key = f"{b['model']}__{tag}" + ("__quickgelu" if b.get("quick_gelu") else "")
    return key.replace("/", "_").replace(":", "_")


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """A weights file's SHA-256, hashed once per process while its size and time stay the same: the DAG asks
    for the backbone key of every path it plans (hashing a 600 MB ViT-B/16 file each time took minutes)."""
    from vlprompt.io import sha256_file

    return sha256_file(path)


def _features_settings(cfg: dict) -> dict:
    f = cfg.get("features", {})
    return {"train_views": f.get("train_views"), "crop_scale_min": f.get("crop_scale_min")}


def _declared_settings(cfg: dict, method: str) -> dict:
    """The config keys behind a method's declared inputs (none for the others, so their hash never changes)."""
    from vlprompt.methods import MethodError, get_method

    try:
        cls = get_method(method)
    except MethodError:
        return {}
    out = {}
    if cls.reads_unlabelled:
        out["unlabelled"] = cfg.get("unlabelled", "none")
    if cls.reads_multitask_prompt:
        out["sources"] = list(cfg.get("sources") or [])
    if cls.reads_new_classnames:
        out["new_class_names"] = new_class_names_given(cfg)
    if cls.reads_teacher or cls.reads_boosting_prompts:
        out["teacher"] = cfg.get("teacher") or {}
    return out


def _label_images_settings(cfg: dict, method: str, dataset: str | None) -> dict:
    """The keys of the folders of images per label that a ``reads_label_images`` method reads (``dataset``'s, or
    every dataset's without one), so that a changed folder re-runs those runs and no other."""
    from vlprompt.data.generated_images import folder, folder_key
    from vlprompt.methods import MethodError, get_method

    try:
        if not get_method(method).reads_label_images:
            return {}
    except MethodError:
        return {}
    names = [dataset] if dataset is not None else sorted(cfg.get("generated_images") or {})
    keys = {}
    for name in names:
        found = folder(cfg, name, "by_label")
        if found is not None:
            keys[name] = folder_key(found)
    return {"label_images": keys} if keys else {}


def new_class_names_given(cfg: dict) -> bool:
    """Whether methods declaring ``reads_new_classnames`` see the new classes' names (base2new, not refused)."""
    return cfg["protocol"] == "base2new" and bool(cfg.get("new_class_names", True))


def stage_hash(cfg: dict, stage: str) -> str:
    """Hash of the settings that change an experiment-level stage's outputs (a Snakemake param: a change
    re-runs the stage). Shared stages (prepare, split, extract) need none: their paths are keyed by what
    defines their content (``grid``)."""
    if stage == "report":
        relevant = {k: cfg.get(k) for k in ("stats", "report", "shots", "seeds", "protocol")}
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return config_hash(relevant)


def method_config_hash(cfg: dict, method: str, dataset: str | None = None, shots: int | None = None) -> str:
    """Hash of everything that changes a training run of ``method`` on ``dataset`` with ``shots`` (a
    Snakemake param): the overrides in force for that run (:func:`method_settings`), so that changing
    ImageNet's epochs re-runs only ImageNet's runs. Without ``shots`` it covers every shots setting of the
    experiment on ``dataset`` (a job training all of them); without ``dataset``, the method's whole block."""
    relevant = {k: cfg.get(k) for k in ("backbone", "protocol", "fewshot", "pocket")}
    relevant["features"] = _features_settings(cfg)
    relevant.update(_declared_settings(cfg, method))
    relevant.update(_label_images_settings(cfg, method, dataset))
    if dataset in (cfg.get("user_datasets") or {}):  # its template makes the hand-crafted prompts
        relevant["template"] = cfg["user_datasets"][dataset].get("template")
    if dataset is None:
        relevant["method"] = (cfg.get("method_overrides") or {}).get(method, {})
    elif shots is None:
        relevant["method"] = {k: method_settings(cfg, method, dataset, k) for k in cfg.get("shots", [])}
    else:
        relevant["method"] = method_settings(cfg, method, dataset, int(shots))
    return config_hash(relevant)
