"""Experiment config: load, fill defaults, validate against the JSON Schema, and hash.

The schema (``schemas/config.schema.yaml``) is the single description of every key; Snakemake's
``validate`` and this module read the same file, so the CLI and the DAG reject the same mistakes.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from vlprompt.experiment.overrides import OverridesError, check_method_overrides, method_settings, override_rows  # noqa: F401
from vlprompt.io import config_hash

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The config is invalid; the message names the key and what is expected."""


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _fill_defaults(cfg: dict, schema: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in cfg and "default" in sub:
            cfg[key] = copy.deepcopy(sub["default"])
        if isinstance(cfg.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(cfg[key], sub)
    for key in ("features", "train", "fewshot", "pocket", "method_overrides", "report", "stats"):
        if key in schema.get("properties", {}) and key not in cfg:
            cfg[key] = {}
            _fill_defaults(cfg[key], schema["properties"][key])


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


def validate(cfg: dict[str, Any], check_names: bool = True) -> dict[str, Any]:
    """Return a copy of ``cfg`` with defaults filled in, or raise :class:`ConfigError`."""
    import jsonschema

    cfg = copy.deepcopy(cfg)
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for e in errors:
            where = "/".join(str(p) for p in e.absolute_path) or "<top level>"
            lines.append(f"  {where}: {e.message}")
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    _fill_defaults(cfg, schema)
    if check_names:
        from vlprompt.data.registry import get_dataset, list_datasets, use_config
        from vlprompt.methods import get_method

        check_user_datasets(cfg)
        use_config(cfg)
        for name in cfg["datasets"] + cfg.get("targets", []):
            get_dataset(name, cfg)
        if cfg["protocol"] in ("crossdataset", "domain_generalization") and not cfg.get("targets"):
            raise ConfigError(
                f"protocol {cfg['protocol']!r} needs `targets`: the datasets to evaluate the trained models on"
            )
        for key in ("allow_new_split", "split_files", "files"):  # a typo here would silently do nothing
            for name in cfg["download"][key]:
                if name not in list_datasets("real"):
                    raise ConfigError(
                        f"download.{key} names {name!r}, not a real dataset; real datasets: {list_datasets('real')}"
                    )
        for name in cfg["methods"]:
            get_method(name)
        for name in cfg["sources"]:
            get_dataset(name, cfg)
        check_declared_inputs(cfg)
        try:
            check_method_overrides(cfg)
        except OverridesError as err:
            raise ConfigError(str(err)) from None
    return cfg


def check_user_datasets(cfg: dict) -> None:
    """Each user dataset's entry beyond the schema (layout-specific keys, ratios), its root there, its name new."""
    from vlprompt.data import user
    from vlprompt.data.registry import list_datasets

    for name in user.entries(cfg):
        if name in list_datasets():
            raise ConfigError(f"user_datasets: {name!r} is a registered dataset; give your dataset another name")
        try:
            user.settings(cfg, name)
            user.root(cfg, name)
        except user.UserDatasetError as err:
            raise ConfigError(str(err)) from None


def check_declared_inputs(cfg: dict) -> None:
    """The inputs the experiment's methods declare exist in the config: the unlabelled images (``unlabelled``) for
    methods that read them, source datasets (``sources``) apart from the evaluated ones for multitask methods."""
    from vlprompt.methods import get_method

    needing = [m for m in cfg["methods"] if get_method(m).reads_unlabelled]
    if needing and cfg.get("unlabelled", "none") == "none":
        raise ConfigError(
            f"{', '.join(needing)} need(s) the target's unlabelled images: set `unlabelled: train` (the "
            "training split without labels) or `unlabelled: test` (transductive), or drop the method"
        )
    multitask = [m for m in cfg["methods"] if get_method(m).reads_multitask_prompt]
    if multitask and not cfg.get("sources"):
        raise ConfigError(
            f"{', '.join(multitask)} start(s) from a multitask prompt: list its source datasets under "
            "`sources` (datasets other than `datasets` and `targets`)"
        )
    evaluated = set(cfg["datasets"]) | set(cfg.get("targets") or [])
    overlap = sorted(set(cfg.get("sources") or []) & evaluated)
    if overlap:
        raise ConfigError(f"`sources` must not hold a dataset that is trained on or evaluated: {overlap}")


def load_config(path: str | Path, check_names: bool = True) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as f:
        cfg = yaml.safe_load(f) if path.suffix in (".yaml", ".yml") else __import__("json").load(f)
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(cfg).__name__}")
    try:
        return validate(cfg, check_names=check_names)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


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
    return out


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
    if dataset in (cfg.get("user_datasets") or {}):  # its template makes the hand-crafted prompts
        relevant["template"] = cfg["user_datasets"][dataset].get("template")
    if dataset is None:
        relevant["method"] = (cfg.get("method_overrides") or {}).get(method, {})
    elif shots is None:
        relevant["method"] = {k: method_settings(cfg, method, dataset, k) for k in cfg.get("shots", [])}
    else:
        relevant["method"] = method_settings(cfg, method, dataset, int(shots))
    return config_hash(relevant)
