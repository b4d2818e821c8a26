"""Your own images as a benchmark: a dataset declared in the config's ``user_datasets`` block, no code.

An entry (schema: ``user_datasets`` in ``experiment/schemas/config.schema.yaml``; guide: ``docs/your_data.md``)::

    user_datasets:
      lesions:                                # the dataset's name in `datasets`, `targets`, reports
        root: /data/lesions                   # read in place, never copied nor written to
        layout: imagefolder                   # imagefolder | imagefolder_split | csv | coop_split
        classnames: /data/lesions_names.tsv   # optional: `label<TAB>name` lines, or a JSON {label: name}
        split: {train: 0.5, val: 0.2, test: 0.3, seed: 0}   # only when the layout gives no split
        base: [melanoma, nevus]               # optional base classes (default: the first half of the labels)
        template: "a photo of a {}."          # the zero-shot template
        skip_unreadable: false                # true: leave unreadable files out (recorded) instead of stopping

Layouts: ``imagefolder`` is ``root/<label>/**/<image>``; ``imagefolder_split`` is
``root/{train,val,test}/<label>/**/<image>`` (``val`` optional: then drawn from train); ``csv`` is one or three
CSV/TSV files of ``path,label`` rows (``csv: file`` or ``csv: {train: f, val: f, test: f}``; paths relative to
``root``; a header row is recognised); ``coop_split`` is CoOp's ``split_zhou_*.json`` (``split_file``, default the
one in ``root``) with paths relative to ``root``. Labels are numbered in sorted order of their raw text (as
torchvision's ImageFolder and Dassl's ``read_and_split_data`` do); class names are the labels cleaned as the
references clean theirs (``_`` becomes a space, runs of whitespace one space), unless ``classnames`` names them.

Where things go: the prepared dataset is ``<data_root>/<name>-<key>/`` holding only ``PREPARED.json`` (the check's
findings, what was skipped, the split's origin, the root) and the split file ``split_zhou_<name>.json`` (CoOp's
format, paths relative to ``root``), written last. The split is written there, not next to the images, because the
user's folder may be read-only and a dataset constructor writing into the dataset's folder is what CoOp/Dassl do and
what this project avoids (``docs/your_data.md``). The key is a hash of what defines the dataset: the root, every
file's relative path, size and modification time, the class names and the split settings (:func:`fingerprint`),
so replacing one image gives a new key, and everything built from the dataset (few-shot subsets, features, runs)
is rebuilt; two experiments' datasets of one name but other files never share a folder.

Splits when the layout gives none: per class (labels in order), the sorted paths shuffled by
``random.Random(seed)``, then ``round(n * train)`` train, ``round(n * val)`` val and the rest test, as Dassl's
``read_and_split_data`` (CoOp's own splits of Caltech101, DTD, EuroSAT...) makes them; each class needs at least
one image in each split.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from vlprompt.data import images
from vlprompt.io import atomic_write_json, config_hash

log = logging.getLogger(__name__)

LAYOUTS = ("imagefolder", "imagefolder_split", "csv", "coop_split")
SPLITS = ("train", "val", "test")
DEFAULT_TEMPLATE = "a photo of a {}."
DEFAULT_SPLIT = {"train": 0.5, "val": 0.2, "test": 0.3, "seed": 0}
FORMAT = 1  # of the split made here: a change of how splits are made changes every user dataset's key
LIST_LIMIT = 20  # files named in an error before "... and N more"
PATH_HEADERS = ("path", "file", "filename", "filepath", "image", "image_path", "img")


class UserDatasetError(ValueError):
    """A user dataset's entry or files are unusable; the message names the dataset, the file and the fix."""


def entries(cfg: dict) -> dict:
    return cfg.get("user_datasets") or {}


def is_user(cfg: dict, name: str) -> bool:
    return name in entries(cfg)


def settings(cfg: dict, name: str) -> dict:
    """The entry with its defaults, checked beyond what the schema can say (layout-specific keys, ratios)."""
    entry = dict(entries(cfg)[name])
    entry.setdefault("layout", "imagefolder")
    entry.setdefault("template", DEFAULT_TEMPLATE)
    entry.setdefault("skip_unreadable", False)
    entry["split"] = {**DEFAULT_SPLIT, **(entry.get("split") or {})}
    where = f"user_datasets.{name}"
    if entry["layout"] not in LAYOUTS:
        raise UserDatasetError(f"{where}.layout: {entry['layout']!r} is not one of {list(LAYOUTS)}")
    if entry["layout"] == "csv" and not entry.get("csv"):
        raise UserDatasetError(f"{where}: layout csv needs `csv: <file>` or `csv: {{train: f, val: f, test: f}}`")
    if isinstance(entry.get("csv"), dict) and not {"train", "test"} <= set(entry["csv"]):
        raise UserDatasetError(f"{where}.csv: one file per split needs train and test, got {sorted(entry['csv'])}")
    if entry.get("csv") and entry["layout"] != "csv":
        raise UserDatasetError(f"{where}: `csv` is only read with layout csv (the layout is {entry['layout']})")
    if entry.get("split_file") and entry["layout"] != "coop_split":
        raise UserDatasetError(f"{where}: `split_file` is only read with layout coop_split")
    ratios = [entry["split"][s] for s in SPLITS]
    if abs(sum(ratios) - 1) > 1e-6:
        raise UserDatasetError(f"{where}.split: train + val + test must be 1, got {sum(ratios):g}")
    if "{}" not in entry["template"]:
        raise UserDatasetError(f"{where}.template needs '{{}}' where the class name goes, got {entry['template']!r}")
    return entry


def root(cfg: dict, name: str) -> Path:
    """The folder the images are read from (relative paths are from the working directory, as ``data_root``)."""
    path = Path(entries(cfg)[name]["root"]).expanduser().resolve()
    if not path.is_dir():
        before = [r for r in _prepared_records(cfg, name) if r["root"] == str(path)]
        hint = f" (it was there when {before[-1]['key']} was prepared: moved or renamed?)" if before else ""
        raise UserDatasetError(
            f"user dataset {name!r}: its root {path} is not a folder{hint}; set user_datasets.{name}.root to the "
            "images' folder"
        )
    return path


def check_workers(cfg: dict) -> int:
    """Threads that read the images in the check: ``features.workers`` (the data loader's), at least 4."""
    return max(4, (cfg.get("features") or {}).get("workers") or 0)


def clean_name(label: str) -> str:
    """A raw label as a class name, cleaned as the references clean theirs: ``_`` to space, whitespace squeezed."""
    return re.sub(r"\s+", " ", label.replace("_", " ")).strip()


# ---- listing the files (cheap: names, sizes and times, no image is opened) --------------------------------


@dataclasses.dataclass
class Listing:
    root: Path
    items: list  # [relpath, raw label, split or None] of every image file
    files: list  # [relpath or absolute path, size, mtime_ns] of every file read: images, others, lists
    ignored: list  # [relpath, why]: non-image files, images outside class folders
    empty_classes: list  # raw labels with no image
    labels: list  # raw labels, sorted: the label ids
    names: dict  # raw label -> class name
    split_origin: str  # "given (<layout>)" or "" when a split is to be made


def _stat(path: Path, shown: str) -> list:
    st = path.stat()
    return [shown, st.st_size, st.st_mtime_ns]


def _files_under(folder: Path, base: Path) -> list[Path]:
    """Every file below ``folder`` (recursively, sorted), hidden files and folders (``.name``) left out."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(base)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(path)
    return out


def _class_folders(where: Path, base: Path, split: str | None, listing: Listing) -> None:
    for path in sorted(where.iterdir()):
        rel = path.relative_to(base).as_posix()
        if path.name.startswith("."):
            continue
        if path.is_file():
            listing.files.append(_stat(path, rel))
            listing.ignored.append([rel, "a file outside the class folders"])
            continue
        n = 0
        for f in _files_under(path, base):
            frel = f.relative_to(base).as_posix()
            listing.files.append(_stat(f, frel))
            if images.is_image_name(f):
                listing.items.append([frel, path.name, split])
                n += 1
            else:
                listing.ignored.append([frel, "not an image file (by its extension)"])
        if n == 0 and path.name not in listing.empty_classes:
            listing.empty_classes.append(path.name)


def _read_table(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8-sig")
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.split("\n", 1)[0] else ","
    rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in PATH_HEADERS:
        rows = rows[1:]
    for k, r in enumerate(rows):
        if len(r) < 2 or not r[0].strip() or not r[1].strip():
            raise UserDatasetError(f"{path}: row {k + 1} {r!r} is not `path,label`")
    return [[r[0].strip(), r[1].strip()] for r in rows]


def _csv_items(name: str, base: Path, entry: dict, listing: Listing) -> None:
    given = entry["csv"]
    tables = given.items() if isinstance(given, dict) else [(None, given)]
    for split, file in tables:
        table = (base / file) if not Path(file).is_absolute() else Path(file)
        if not table.is_file():
            raise UserDatasetError(f"user dataset {name!r}: the csv file {table} does not exist")
        listing.files.append(_stat(table, str(table)))
        for path, label in _read_table(table):
            p = Path(path)
            if p.is_absolute():
                try:
                    path = p.resolve().relative_to(base).as_posix()
                except ValueError:
                    raise UserDatasetError(
                        f"user dataset {name!r}: {table} lists {p}, outside the root {base}; images must be under "
                        f"the root (paths relative to it)"
                    ) from None
            full = base / path
            listing.files.append(_stat(full, path) if full.is_file() else [path, -1, -1])
            listing.items.append([path, label, split])


def _coop_items(name: str, base: Path, entry: dict, listing: Listing) -> dict[str, int]:
    from vlprompt.data.splits import SplitError, read_split

    file = entry.get("split_file")
    if file is None:
        found = sorted(base.glob("split_zhou_*.json"))
        if len(found) != 1:
            raise UserDatasetError(
                f"user dataset {name!r}: layout coop_split needs `split_file` (found {len(found)} split_zhou_*.json "
                f"in {base})"
            )
        table = found[0]
    else:
        table = base / file if not Path(file).is_absolute() else Path(file)
    try:
        split = read_split(table)
    except SplitError as err:
        raise UserDatasetError(f"user dataset {name!r}: {err}") from None
    listing.files.append(_stat(table, str(table)))
    labels: dict[str, int] = {}
    for part in SPLITS:
        for rel, label, cname in split[part]:
            labels.setdefault(cname, label)
            full = base / rel
            listing.files.append(_stat(full, rel) if full.is_file() else [rel, -1, -1])
            listing.items.append([rel, cname, part])
    return labels


def read_classnames(name: str, path: Path) -> dict[str, str]:
    """A classnames file: ``label<TAB>name`` lines, or a JSON object ``{label: name}``."""
    if not path.is_file():
        raise UserDatasetError(f"user dataset {name!r}: the classnames file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as err:
            raise UserDatasetError(f"user dataset {name!r}: {path} is not JSON ({err})") from None
        if not isinstance(data, dict):
            raise UserDatasetError(f"user dataset {name!r}: {path} must hold an object {{label: name}}")
        return {str(k): str(v) for k, v in data.items()}
    out = {}
    for k, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        if "\t" not in line:
            raise UserDatasetError(f"user dataset {name!r}: {path} line {k + 1} is not `label<TAB>name`: {line!r}")
        label, cname = line.split("\t", 1)
        out[label.strip()] = cname.strip()
    return out


def list_files(cfg: dict, name: str) -> Listing:
    """Every file of the dataset as its layout lays them out; no image is opened."""
    entry = settings(cfg, name)
    base = root(cfg, name)
    layout = entry["layout"]
    listing = Listing(base, [], [], [], [], [], {}, "")
    coop_labels: dict[str, int] = {}
    if layout == "imagefolder":
        _class_folders(base, base, None, listing)
    elif layout == "imagefolder_split":
        for split in SPLITS:
            if (base / split).is_dir():
                _class_folders(base / split, base, split, listing)
            elif split != "val":
                raise UserDatasetError(
                    f"user dataset {name!r}: layout imagefolder_split needs {base / split}/<label>/<image> "
                    f"(val/ is optional)"
                )
        for path in sorted(base.iterdir()):
            if path.name not in SPLITS and not path.name.startswith("."):
                listing.ignored.append([path.name, "not train/, val/ or test/"])
        # a class folder empty in one split but present in another is not an empty class
        listing.empty_classes = [c for c in listing.empty_classes if c not in {i[1] for i in listing.items}]
    elif layout == "csv":
        _csv_items(name, base, entry, listing)
    else:
        coop_labels = _coop_items(name, base, entry, listing)
    if layout != "imagefolder" and not (layout == "csv" and not isinstance(entry["csv"], dict)):
        listing.split_origin = f"given ({layout})"
        if layout == "imagefolder_split" and not (base / "val").is_dir():
            listing.split_origin += ", val drawn from train"
    raw = {i[1] for i in listing.items} | set(listing.empty_classes)
    listing.labels = sorted(raw, key=lambda c: (coop_labels.get(c, 0), c)) if coop_labels else sorted(raw)
    overrides = {}
    if entry.get("classnames"):
        file = Path(entry["classnames"]).expanduser()
        file = file if file.is_absolute() else Path.cwd() / file
        overrides = read_classnames(name, file)
        listing.files.append(_stat(file, str(file.resolve())))
        unknown = sorted(set(overrides) - raw)
        if unknown:
            raise UserDatasetError(
                f"user dataset {name!r}: {file} names labels that are not in the data: {unknown[:5]}; labels: "
                f"{listing.labels[:10]}"
            )
    listing.names = {label: overrides.get(label, clean_name(label)) for label in listing.labels}
    return listing


# ---- the key ------------------------------------------------------------------------------------------------


def fingerprint(cfg: dict, name: str) -> str:
    """Hash of what defines the prepared dataset (module docstring), computed once per process and entry."""
    entry = settings(cfg, name)
    defining = {k: v for k, v in entry.items() if k != "template"}  # the template changes runs, not the data
    return _fingerprint(name, str(root(cfg, name)), json.dumps(defining, sort_keys=True), str(Path.cwd()))


@functools.lru_cache(maxsize=64)
def _fingerprint(name: str, base: str, defining: str, cwd: str) -> str:
    listing = list_files({"user_datasets": {name: json.loads(defining)}}, name)
    return config_hash(
        {
            "format": FORMAT,
            "root": base,
            "files": listing.files,
            "names": listing.names,
            "settings": json.loads(defining),
        }
    )


def forget() -> None:
    """Drop the fingerprints computed so far (files changed within this process)."""
    _fingerprint.cache_clear()


def _prepared_records(cfg: dict, name: str) -> list[dict]:
    data_root = Path(cfg.get("data_root", "data"))
    out = []
    for record in sorted(data_root.glob(f"{name}-*/PREPARED.json")):
        try:
            out.append(json.loads(record.read_text()))
        except ValueError:
            continue
    return [r for r in out if r.get("kind") == "user" and "root" in r]


# ---- the check ----------------------------------------------------------------------------------------------


def _inspect_all(base: Path, relpaths: list[str], workers: int) -> dict[str, dict]:
    from concurrent.futures import ThreadPoolExecutor

    def one(rel: str) -> dict:
        path = base / rel
        if not path.is_file():
            return {"error": "no such file", "sha256": None}
        return images.inspect(path)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(zip(relpaths, pool.map(one, relpaths), strict=True))


def _few(paths: list[str]) -> str:
    shown = ", ".join(paths[:LIST_LIMIT])
    return shown + (f" ... and {len(paths) - LIST_LIMIT} more" if len(paths) > LIST_LIMIT else "")


def make_split(name: str, rows: list[list], ratios: dict, seed: int) -> dict[str, list]:
    """Stratified train/val/test rows from ``[relpath, label, classname]`` rows (module docstring)."""
    import random

    rng = random.Random(seed)
    by_label: dict[int, list] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    out: dict[str, list] = {s: [] for s in SPLITS}
    for label in sorted(by_label):
        group = sorted(by_label[label])
        rng.shuffle(group)
        n = len(group)
        n_train, n_val = round(n * ratios["train"]), round(n * ratios["val"])
        if min(n_train, n_val, n - n_train - n_val) < 1:
            raise UserDatasetError(
                f"user dataset {name!r}: class {group[0][2]!r} has {n} image(s), too few for a "
                f"{ratios['train']:g}/{ratios['val']:g}/{ratios['test']:g} split with at least one image in each "
                f"split; add images, or give the split (layout imagefolder_split or csv per split)"
            )
        out["train"] += group[:n_train]
        out["val"] += group[n_train : n_train + n_val]
        out["test"] += group[n_train + n_val :]
    return out


def _val_from_train(name: str, split: dict, ratios: dict, seed: int) -> dict:
    share = ratios["val"] / (ratios["train"] + ratios["val"])
    drawn = make_split(name, split["train"], {"train": 1 - share, "val": share / 2, "test": share / 2}, seed)
    return {"train": drawn["train"], "val": drawn["val"] + drawn["test"], "test": split["test"]}


def check(cfg: dict, name: str, workers: int = 4) -> dict:
    """Every finding about the dataset before anything trains, and the split it gives.

    Returns a report: ``errors`` (one line each: what stops ``prepare``), ``warnings`` (what is used but worth
    knowing), ``counts`` (classes, images per split, per-class min/median/max), ``conversions`` (images converted
    on reading, by kind), ``unreadable``, ``skipped``, ``ignored``, ``duplicates``, ``split`` and ``classnames``.
    """
    entry = settings(cfg, name)
    listing = list_files(cfg, name)
    where = f"user dataset {name!r}"
    errors: list[str] = []
    warnings: list[str] = []
    found = _inspect_all(listing.root, [i[0] for i in listing.items], workers)
    unreadable = sorted(rel for rel, info in found.items() if "error" in info)
    if unreadable:
        line = f"{where}: {len(unreadable)} unreadable or truncated image(s): " + _few(
            [f"{r} ({found[r]['error']})" for r in unreadable]
        )
        if entry["skip_unreadable"]:
            warnings.append(line + "; skipped (skip_unreadable: true)")
        else:
            errors.append(line + f"; fix or remove them, or set user_datasets.{name}.skip_unreadable: true")
    if listing.ignored:
        warnings.append(
            f"{where}: {len(listing.ignored)} file(s) ignored: " + _few([f"{r} ({why})" for r, why in listing.ignored])
        )
    if listing.empty_classes:
        errors.append(
            f"{where}: empty class(es) {listing.empty_classes}: no image in their folder; add images or remove them"
        )
    by_name: dict[str, list[str]] = defaultdict(list)
    for label, cname in listing.names.items():
        by_name[cname].append(label)
    clashes = {c: labels for c, labels in by_name.items() if len(labels) > 1}
    if clashes:
        errors.append(
            f"{where}: labels {list(clashes.values())[0]} all become the class name {next(iter(clashes))!r}; give "
            "them distinct names in a classnames file"
        )
    folded: dict[str, list[str]] = defaultdict(list)
    for cname in by_name:
        folded[re.sub(r"\s+", " ", cname).strip().casefold()].append(cname)
    for same in (v for v in folded.values() if len(v) > 1):
        warnings.append(
            f"{where}: class names {same} differ only in case or whitespace (CLIP's tokenizer lower-cases text, so "
            "their hand-crafted prompts are the same); rename one in a classnames file if they are one class"
        )
    conversions = Counter(info["conversion"] for info in found.values() if info.get("conversion"))
    rotated = sum(1 for info in found.values() if info.get("rotated"))
    if rotated:
        conversions["EXIF-rotated"] = rotated
    label_of = {label: k for k, label in enumerate(listing.labels)}
    kept = [i for i in listing.items if i[0] not in set(unreadable)]
    rows = [[rel, label_of[raw], listing.names[raw], part] for rel, raw, part in kept]
    split: dict[str, list] = {s: [] for s in SPLITS}
    origin = listing.split_origin
    if not errors:
        ratios, seed = entry["split"], entry["split"]["seed"]
        if not origin:
            split = make_split(name, [r[:3] for r in rows], ratios, seed)
            origin = f"made here: stratified {ratios['train']:g}/{ratios['val']:g}/{ratios['test']:g}, seed {seed}"
        else:
            for r in rows:
                split[r[3]].append(r[:3])
            if not split["val"]:
                split = _val_from_train(name, split, ratios, seed)
        for part in ("train", "test"):
            missing = sorted({listing.names[c] for c in listing.labels} - {r[2] for r in split[part]})
            if missing:
                errors.append(f"{where}: class(es) {missing[:5]} have no {part} image")
    part_of = {r[0]: "not split" for r in rows} | {r[0]: part for part in SPLITS for r in split[part]}
    by_hash: dict[str, list[str]] = defaultdict(list)
    for rel in sorted(part_of):
        by_hash[found[rel]["sha256"]].append(rel)
    duplicates = [group for group in by_hash.values() if len(group) > 1]
    leaks = [g for g in duplicates if len({part_of[r] for r in g}) > 1]
    if leaks:
        warnings.append(
            f"{where}: {len(leaks)} image(s) with the same content in more than one split (a leak: a test image that "
            "is also a training image): "
            + _few([" = ".join(f"{r} ({part_of[r]})" for r in g) for g in leaks])
            + "; remove the copies"
        )
    within = [g for g in duplicates if g not in leaks]
    if within:
        groups = _few([" = ".join(g) for g in within])
        warnings.append(f"{where}: {len(within)} group(s) of files with the same content (not across splits): {groups}")
    counts = _counts({**split, "all": [r[:3] for r in rows]}, listing.names)
    return {
        "dataset": name,
        "root": str(listing.root),
        "layout": entry["layout"],
        "split_origin": origin,
        "errors": errors,
        "warnings": warnings,
        "counts": counts,
        "conversions": dict(sorted(conversions.items())),
        "unreadable": [[r, found[r]["error"]] for r in unreadable],
        "skipped": [[r, found[r]["error"]] for r in unreadable] if entry["skip_unreadable"] else [],
        "ignored": listing.ignored,
        "duplicates": duplicates,
        "leaks": leaks,
        "classnames": [listing.names[c] for c in listing.labels],
        "split": split,
    }


def _counts(split: dict, names: dict) -> dict:
    out: dict = {"classes": len(names), "images": len(split["all"])}
    for part in (*SPLITS, "all"):
        per_class = Counter(r[2] for r in split[part])
        values = [per_class.get(c, 0) for c in names.values()]
        out[part] = {
            "images": len(split[part]),
            "per_class_min": min(values, default=0),
            "per_class_median": statistics.median(values) if values else 0,
            "per_class_max": max(values, default=0),
            "smallest_class": min(names.values(), key=lambda c: per_class.get(c, 0)) if values else None,
        }
    return out


def format_report(report: dict) -> str:
    """The check as lines for a person."""
    c = report["counts"]
    lines = [
        f"{report['dataset']}: {c['classes']} classes, {c['images']} images at {report['root']} "
        f"(layout {report['layout']}; split {report['split_origin'] or 'not made: errors below'})"
    ]
    for part in (*SPLITS, "all"):
        p = c[part]
        lines.append(
            f"  {part:5s} {p['images']:7d} images; per class min {p['per_class_min']} "
            f"({p['smallest_class']!s}), median {p['per_class_median']:g}, max {p['per_class_max']}"
        )
    conv = ", ".join(f"{k} {v}" for k, v in report["conversions"].items())
    lines.append(f"  converted on reading (EXIF orientation applied, then RGB): {conv or 'none'}")
    lines += [f"  warning: {w}" for w in report["warnings"]]
    lines += [f"  error: {e}" for e in report["errors"]]
    lines.append("  ok: ready to prepare" if not report["errors"] else "  not ready: fix the errors above")
    return "\n".join(lines)


# ---- preparing ----------------------------------------------------------------------------------------------


def prepare(cfg: dict, name: str, folder: Path, split_filename: str, workers: int = 4) -> Path:
    """Check the dataset, stop on its errors, else write ``folder/PREPARED.json`` and the split file (last)."""
    report = check(cfg, name, workers)
    if report["errors"]:
        raise UserDatasetError("; ".join(report["errors"]))
    for line in report["warnings"]:
        log.warning("%s", line)
    base = report["root"]
    for record in _prepared_records(cfg, name):
        if record["root"] != base and not Path(record["root"]).exists():
            log.warning(
                "user dataset %r was prepared from %s, which is gone; it is now read from %s (a new key: its "
                "features and runs are rebuilt)",
                name,
                record["root"],
                base,
            )
    split = report.pop("split")
    record = {
        "dataset": name,
        "kind": "user",
        "key": folder.name,
        **report,
        "settings": settings(cfg, name),
        "images": {part: len(split[part]) for part in SPLITS},
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "PREPARED.json", record)
    atomic_write_json(folder / split_filename, split)  # last: its presence marks a prepared dataset
    return folder / split_filename


def base_new(cfg: dict, name: str, classnames: list[str]) -> tuple[list[int], list[int]] | None:
    """The entry's explicit base/new classes as label ids, or None (the first half of the labels, as CoCoOp)."""
    entry = settings(cfg, name)
    if not entry.get("base") and not entry.get("new"):
        return None
    index = {c: k for k, c in enumerate(classnames)}

    def ids(key: str) -> list[int]:
        unknown = [c for c in entry.get(key) or [] if c not in index]
        if unknown:
            raise UserDatasetError(
                f"user_datasets.{name}.{key} names {unknown[:5]}, not class names of the dataset: {classnames[:10]}"
            )
        return sorted(index[c] for c in entry.get(key) or [])

    base, new = ids("base"), ids("new")
    if not base:
        base = [k for k in range(len(classnames)) if k not in set(new)]
    if not new:
        new = [k for k in range(len(classnames)) if k not in set(base)]
    if set(base) & set(new) or not base or not new:
        raise UserDatasetError(f"user_datasets.{name}: base and new must be non-empty and disjoint")
    return base, new


#: what methods that read more than the dataset's template fall back to on a user dataset (recorded in each run)
FALLBACKS = {
    "template_tables": "the dataset's template (method_templates.json knows only the published datasets)",
    "descriptions": "<$VLPROMPT_DESCRIPTIONS>/<name>.json if you write one (CuPL's format), else one sentence per "
    "class: the dataset's template",
    "differential_descriptions": "none: FuDD needs differential/<name>_prompt_pairs.json and stops naming it",
}


def provenance(cfg: dict, name: str, folder: Path) -> dict:
    """What a run on a user dataset records of it: the prepared copy's key, root, split origin, what the check
    converted and skipped, the template and the fallbacks of methods that read template tables or descriptions."""
    record = json.loads((folder / "PREPARED.json").read_text()) if (folder / "PREPARED.json").is_file() else {}
    return {
        "kind": "user",
        "key": folder.name,
        "root": record.get("root"),
        "layout": record.get("layout"),
        "split_origin": record.get("split_origin"),
        "images": record.get("images"),
        "conversions": record.get("conversions"),
        "skipped": len(record.get("skipped") or []),
        "template": settings(cfg, name)["template"],
        "fallbacks": FALLBACKS,
    }
