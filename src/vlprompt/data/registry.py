"""The dataset registry: every benchmark the workbench knows, pocket and real.

A prepared dataset lives in ``<data_root>/<name>/`` as image files plus the split file
``split_zhou_<name>.json`` (CoOp's format, paths relative to that folder). The split file is
written last, so its presence marks a complete dataset.

The 15 real benchmarks (the 11 of CoOp's base-to-new tables and the four ImageNet variants) are
registered from ``datasets.json`` (sources, checksums, layouts, split files, class-name cleanup) and
``templates.json`` (CoOp's hand-crafted templates); :mod:`vlprompt.data.real` fetches and prepares them.

A user's own dataset is an entry of the config's ``user_datasets`` block (:mod:`vlprompt.data.user`): the functions
here that take a config find it there (``kind`` "user"); :func:`use_config` also registers the entries of the
config a process works with, so that code holding only a dataset's name (its template) finds them too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vlprompt.data import pocket, real, user


class DatasetError(ValueError):
    """Unknown or unusable dataset; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    template: str  # CoOp's hand-crafted template for the zero-shot baseline
    kind: str  # "pocket", "real" or "user"
    description: str = ""
    style: str | None = None  # pocket datasets: the rendering style
    n_classes: int | None = None
    coop_name: str | None = None  # real datasets: CoOp's name (OxfordFlowers for Flowers102, ...)
    info: dict | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)  # datasets.json

    def split_filename(self) -> str:
        return f"split_zhou_{self.name}.json"


POCKET_STYLES = ("sketch", "noisy", "dark", "pixelated", "blurry", "cluttered", "faded", "photo")
_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _REGISTRY:
        raise DatasetError(f"dataset {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


for _style in POCKET_STYLES:
    register(
        DatasetSpec(
            name=f"pocket_{_style}",
            template=pocket.STYLES[_style][1],
            kind="pocket",
            style=_style,
            description=f"pocket world, {_style} style",
        )
    )


REAL_DATASETS = tuple(real.catalogue())
for _name in REAL_DATASETS:
    _info = real.info(_name)
    register(
        DatasetSpec(
            name=_name,
            template=real.templates().get(_info["coop_name"]) or _info["template"],  # OOD sets: their own
            kind="real",
            description=_info["homepage"],
            n_classes=_info["n_classes"],
            coop_name=_info["coop_name"],
            info=_info,
        )
    )


_USER: dict[str, DatasetSpec] = {}  # the user datasets of the config this process works with (use_config)


def list_datasets(kind: str | None = None) -> list[str]:
    """Registered dataset names, optionally only those of one kind ("pocket" or "real")."""
    return [n for n, s in _REGISTRY.items() if kind is None or s.kind == kind]


def user_spec(cfg: dict, name: str) -> DatasetSpec:
    entry = user.entries(cfg)[name]
    return DatasetSpec(
        name=name,
        template=entry.get("template") or user.DEFAULT_TEMPLATE,
        kind="user",
        description=f"your images at {entry['root']}",
    )


def use_config(cfg: dict) -> None:
    """Register the user datasets of ``cfg`` for lookups by name alone (those of an earlier config are dropped)."""
    clash = sorted(set(user.entries(cfg)) & set(_REGISTRY))
    if clash:
        raise DatasetError(
            f"user_datasets: {clash} already name(s) a registered dataset; give your dataset another name"
        )
    _USER.clear()
    _USER.update({name: user_spec(cfg, name) for name in user.entries(cfg)})


def get_dataset(name: str, cfg: dict | None = None) -> DatasetSpec:
    """The dataset called ``name``: the config's user dataset of that name, else a registered one."""
    if cfg is not None and user.is_user(cfg, name):
        return user_spec(cfg, name)
    spec = _REGISTRY.get(name) or (_USER.get(name) if cfg is None else None)
    if spec is None:
        mine = sorted(user.entries(cfg)) if cfg is not None else sorted(_USER)
        raise DatasetError(
            f"unknown dataset {name!r}; available: {list_datasets()}"
            + (f", and this config's user_datasets {mine}" if mine else "; your own images: a `user_datasets` entry")
        )
    return spec


POCKET_PER_CLASS = {"train": 24, "val": 8, "test": 20}


def pocket_settings(cfg: dict) -> dict:
    """Everything that defines a pocket dataset's images and split file besides its style.

    A v1 world's settings are those v1 always had (its datasets keep their folders); a v2 world adds
    its version, its cues and the v2 drawing code's format.
    """
    p = cfg.get("pocket", {})
    world = pocket_world(cfg)
    settings = {
        "n_colours": world.n_colours,
        "n_shapes": world.n_shapes,
        "image_size": world.image_size,
        "seed": world.seed,
        "label_order": world.label_order,
        "per_class": {**POCKET_PER_CLASS, **p.get("per_class", {})},
        "format": pocket.FORMAT,
    }
    if world.version > 1:
        settings.update(
            world=f"v{world.version}", spurious=world.spurious, spurious_p=world.spurious_p, format=pocket.FORMAT_V2
        )
    return settings


def dataset_key(cfg: dict, name: str) -> str:
    """The folder name of a prepared dataset (and of its splits and feature banks): what defines its content.

    A real dataset is its publisher's files and published split: its name. A pocket dataset is generated
    from the config's ``pocket`` block, so its key adds a hash of those settings
    (``pocket_dark-1f2e3d4c``): experiments with other pocket settings get their own copy, never the
    same folder with other content.
    """
    from vlprompt.io import config_hash

    spec = get_dataset(name, cfg)
    if spec.kind == "user":
        try:
            return f"{name}-{user.fingerprint(cfg, name)[:8]}"
        except user.UserDatasetError as err:
            raise DatasetError(str(err)) from None
    if spec.kind == "pocket":
        return f"{name}-{config_hash(pocket_settings(cfg))[:8]}"
    return name


def dataset_dir(cfg: dict, name: str) -> Path:
    return Path(cfg.get("data_root", "data")) / dataset_key(cfg, name)


def split_path(cfg: dict, name: str) -> Path:
    return dataset_dir(cfg, name) / get_dataset(name, cfg).split_filename()


def image_root(cfg: dict, name: str) -> Path:
    """The folder a split file's image paths are relative to: the prepared folder, or a user dataset's root."""
    if user.is_user(cfg, name):
        try:
            return user.root(cfg, name)
        except user.UserDatasetError as err:
            raise DatasetError(str(err)) from None
    return dataset_dir(cfg, name)


def provenance(cfg: dict, name: str) -> dict | None:
    """What a run records of a user dataset (:func:`vlprompt.data.user.provenance`); None for the others."""
    return user.provenance(cfg, name, dataset_dir(cfg, name)) if user.is_user(cfg, name) else None


def reads_exif(cfg: dict, name: str) -> bool:
    """Whether images are read with their EXIF orientation applied (a user's images; :mod:`vlprompt.data.images`)."""
    return user.is_user(cfg, name)


def pocket_world(cfg: dict) -> pocket.World:
    """The config's pocket world: the preset ``pocket.world`` (v1 if absent) with the block's keys over it."""
    p = cfg.get("pocket", {})
    try:
        return pocket.world(
            p.get("world", "v1"),
            n_colours=p.get("n_colours"),
            n_shapes=p.get("n_shapes"),
            seed=p.get("seed"),
            label_order=p.get("label_order"),
            spurious=p.get("spurious"),
            spurious_p=p.get("spurious_p"),
        )
    except ValueError as err:
        raise DatasetError(f"config pocket block: {err}") from None


def prepare(cfg: dict, name: str, progress: bool = True) -> Path:
    """Make the dataset ready on disk; return its split file."""
    spec = get_dataset(name, cfg)
    if spec.kind == "user":
        try:
            return user.prepare(cfg, name, dataset_dir(cfg, name), spec.split_filename(), user.check_workers(cfg))
        except user.UserDatasetError as err:
            raise DatasetError(str(err)) from None
    if spec.kind == "pocket":
        assert spec.style is not None, f"the registry's pocket dataset {name} has no style"
        ds = pocket.PocketDataset(name=name, style=spec.style, per_class=pocket_settings(cfg)["per_class"])
        return pocket.generate(ds, pocket_world(cfg), dataset_dir(cfg, name), progress=progress)
    if spec.kind == "real":
        try:
            return real.prepare(cfg, name, progress=progress)
        except real.RealDatasetError as err:
            raise DatasetError(str(err)) from None
    raise DatasetError(f"dataset {name!r} of kind {spec.kind!r} cannot be prepared")


def status_table(cfg: dict) -> list[dict]:
    """Every dataset with its state on this machine, for ``python -m vlprompt datasets``.

    Each row: ``name``, ``kind`` ("pocket"/"real"), ``status`` (missing / downloaded / verified /
    prepared), ``path`` (where the prepared dataset goes), ``split_file``, ``downloads`` (where archives
    go; None for pocket), ``automatic`` (False when some file must be downloaded by hand) and ``detail``.
    "downloaded": all files present but not all confirmed by a recorded checksum or size; "verified":
    all confirmed; "prepared": the split file exists.
    """
    rows = []
    for name in list_datasets():
        spec = get_dataset(name)
        if spec.kind == "real":
            rows.append(real.status(cfg, name))
            continue
        path = split_path(cfg, name)
        rows.append(
            {
                "name": name,
                "kind": spec.kind,
                "status": "prepared" if path.is_file() else "missing",
                "path": str(path.parent),
                "split_file": str(path),
                "downloads": None,
                "automatic": True,
                "detail": "generated offline",
            }
        )
    return rows + [user_status(cfg, name) for name in user.entries(cfg)]


def user_status(cfg: dict, name: str) -> dict:
    """A user dataset's row of :func:`status_table`: prepared (for its files as they are now), or missing."""
    row = {"name": name, "kind": "user", "downloads": None, "automatic": True}
    try:
        path = split_path(cfg, name)
    except DatasetError as err:
        return {
            **row,
            "status": "missing",
            "path": str(user.entries(cfg)[name]["root"]),
            "split_file": None,
            "detail": str(err),
        }
    before = [p for p in Path(cfg.get("data_root", "data")).glob(f"{name}-*/{path.name}") if p != path]
    detail = f"your images at {user.root(cfg, name)}"
    if not path.is_file() and before:
        detail += f"; changed since {before[0].parent.name} was prepared: prepared again on the next run"
    return {
        **row,
        "status": "prepared" if path.is_file() else "missing",
        "path": str(path.parent),
        "split_file": str(path),
        "detail": detail,
    }
