"""The 15 real benchmarks: where their files come from and how they become a prepared dataset.

Per-dataset facts (URLs, checksums, layout, split file, class-name cleanup) live in ``datasets.json``
beside this file, with their sources; this module only acts on them.

On disk (``D = <data_root>``)::

    D/downloads/<Name>/<archive>             fetched (or placed by hand) archives, with .verified stamps
    D/downloads/<Name>/split_zhou_<Coop>.json   the published split file, as fetched
    D/.<Name>.partial/                       staging while preparing; removed on any error
    D/<Name>/                                images as the archives lay them out, plus
    D/<Name>/PREPARED.json                   what was used (files, checksums, split origin)
    D/<Name>/split_zhou_<Name>.json          written last: its presence marks a complete dataset

A prepared split file's paths are relative to ``D/<Name>/`` (the published files' paths are relative to
each dataset's image folder; preparing prefixes them). Everything goes to ``D/<Name>/`` in one rename of
the staging folder, so an interrupted or failed preparation leaves no half-prepared dataset. ImageNet is
the exception: its licence means the user puts the extracted images in place and only the split file
is written there.

Overrides, all under the config's ``download`` mapping (described in the config schema and in
:func:`resolve_files`): ``mirror``, ``files``, ``split_files``, ``allow_new_split``, ``downloads_root``,
``retries``, ``timeout``.

Every error names the dataset, the file and the fix: :class:`RealDatasetError` for what is missing or
unusable, and the downloader's :class:`~vlprompt.data.download.ChecksumError` /
:class:`~vlprompt.data.download.UnsafeArchiveError` (re-raised with the dataset's name) for a file that
arrived but is not the published one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import shutil
from importlib import resources
from pathlib import Path

from vlprompt.data import download as dl
from vlprompt.io import atomic_write_json, require_space, space_errors

log = logging.getLogger(__name__)

STATUSES = ("missing", "downloaded", "verified", "prepared")


class RealDatasetError(ValueError):
    """A real dataset cannot be fetched or prepared; the message says exactly what to put where."""


@functools.cache
def catalogue() -> dict:
    return json.loads(resources.files("vlprompt.data").joinpath("datasets.json").read_text())["datasets"]


@functools.cache
def templates() -> dict[str, str]:
    return json.loads(resources.files("vlprompt.data").joinpath("templates.json").read_text())


@functools.cache
def imagenet_classes() -> dict:
    return json.loads(resources.files("vlprompt.data").joinpath("imagenet_classes.json").read_text())


def info(name: str) -> dict:
    return catalogue()[name]


def data_root(cfg: dict) -> Path:
    return Path(cfg.get("data_root", "data"))


def _options(cfg: dict) -> dict:
    return cfg.get("download") or {}


def downloads_dir(cfg: dict, name: str) -> Path:
    root = _options(cfg).get("downloads_root")
    return (Path(root) if root else data_root(cfg) / "downloads") / name


def split_filename(name: str) -> str:
    return f"split_zhou_{name}.json"


def resolve_files(cfg: dict, name: str) -> list[dict]:
    """The dataset's files with the config's overrides applied.

    ``download.mirror: URL`` fetches every file from ``<URL>/<Name>/<file name>`` (same checksums: a
    mirror of the official archives). ``download.files: {<Name>: {<file name>: {url, md5, sha256,
    size_bytes, manual}}}`` replaces single fields; giving either checksum replaces both (a different
    archive has different checksums), and a ``url`` given there makes a manual file fetchable.
    """
    opts = _options(cfg)
    mirror = opts.get("mirror")
    overrides = (opts.get("files") or {}).get(name, {})
    unknown = set(overrides) - {f["name"] for f in info(name)["files"]}
    if unknown:
        raise RealDatasetError(
            f"download.files.{name} names unknown files {sorted(unknown)}; "
            f"{name} has {[f['name'] for f in info(name)['files']]}"
        )
    out = []
    for entry in info(name)["files"]:
        entry = dict(entry, official_url=entry["url"])  # where to send a user who downloads by hand
        if mirror:
            entry["url"] = f"{mirror.rstrip('/')}/{name}/{entry['name']}"
            entry["manual"] = False
        o = overrides.get(entry["name"], {})
        if "md5" in o or "sha256" in o:
            entry["md5"], entry["sha256"] = None, None
        entry.update(o)
        if "url" in o and "manual" not in o:
            entry["manual"] = False
        out.append(entry)
    return out


def _by_hand(entry: dict) -> str:
    """Where a person downloads the file: its publisher's page, else its official URL."""
    return entry.get("page") or entry.get("official_url") or entry["url"]


def _manual_instructions(name: str, entry: dict, path: Path) -> str:
    where = _by_hand(entry)
    note = entry.get("note") or info(name).get("manual_note") or ""
    return f"{name}: {entry['name']} must be downloaded by hand from {where} and put at {path}" + (
        f"; {note}" if note else ""
    )


def _fetch_settings(cfg: dict) -> dict:
    opts = _options(cfg)
    return {k: opts[k] for k in ("retries", "timeout") if opts.get(k) is not None}


def fetch_files(cfg: dict, name: str, progress: bool = True) -> list[tuple[dict, Path, bool]]:
    """Download (when allowed) and verify every file; return (entry, path, verified) per file."""
    out = []
    missing = []
    for entry in resolve_files(cfg, name):
        path = downloads_dir(cfg, name) / entry["name"]
        if not path.is_file():
            if entry.get("manual"):
                missing.append(_manual_instructions(name, entry, path))
                continue
            try:
                dl.download(entry["url"], path, progress=progress, **_fetch_settings(cfg))
            except dl.DownloadError as err:
                mirror = (
                    "check download.mirror"
                    if _options(cfg).get("mirror")
                    else "set download.mirror to a server holding a copy"
                )
                raise RealDatasetError(
                    f"{name}: {err}. Alternatively download {entry['name']} by hand from "
                    f"{_by_hand(entry)} and put it at {path}, or {mirror}"
                ) from None
        out.append((entry, path))
    if missing:
        raise RealDatasetError(
            f"{name}: {len(missing)} missing file(s), then run prepare again:\n  " + "\n  ".join(missing)
        )
    checked = []
    for entry, path in out:
        try:
            ok = dl.is_verified(path) or dl.verify(
                path, sha256=entry.get("sha256"), md5=entry.get("md5"), size_bytes=entry.get("size_bytes")
            )
        except dl.ChecksumError as err:
            if entry.get("manual"):
                fix = f"replace it with the file published at {_by_hand(entry)}"
            else:  # ours: remove so that the next run fetches it afresh
                path.unlink(missing_ok=True)
                fix = (
                    "it was deleted; run prepare again to download it afresh (if it fails again, the server "
                    "sends a different file: check download.mirror / download.files)"
                )
            raise dl.ChecksumError(f"{name}: {entry['name']} is not the published file ({err}); {fix}") from None
        if not ok:
            log.warning(
                "%s: no checksum or size recorded for %s; trusting it as long as it extracts", name, entry["name"]
            )
        checked.append((entry, path, ok))
    return checked


def fetch_split_file(cfg: dict, name: str) -> Path | None:
    """The published split file (downloaded or given), or None when it is absent and opted out of.

    ``download.split_files.<Name>`` gives it as a URL or a local path instead of the published link.
    """
    split = info(name)["split"]
    path = downloads_dir(cfg, name) / split["file"]
    given = (_options(cfg).get("split_files") or {}).get(name)
    source = given if given is not None else split["url"]
    if given is not None and not dl.is_url(given):
        path = dl._local_path(given)
        problem = None if path.is_file() else f"{path} does not exist"
    elif given is None and path.is_file():
        problem = None
    else:
        if given is not None:  # a URL given by the user: fetch it afresh
            path.unlink(missing_ok=True)
        try:
            dl.download(source, path, progress=False, **_fetch_settings(cfg))
            problem = None
        except dl.DownloadError as err:
            problem = str(err)
    if problem is not None:
        if name in (_options(cfg).get("allow_new_split") or []):
            log.warning(
                "%s: published split file unavailable (%s); making a new split as opted in "
                "(download.allow_new_split): results will not match published few-shot subsets",
                name,
                problem,
            )
            return None
        raise RealDatasetError(
            f"{name}: the published split file {split['file']} is missing ({problem}). Download it from "
            f"{split['page']} and put it at {downloads_dir(cfg, name) / split['file']}, or set "
            f"download.split_files.{name} to its path or URL. To make a new random split instead (it will "
            f"not match the papers' few-shot subsets), add {name} to download.allow_new_split."
        )
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise RealDatasetError(
            f"{name}: {path} is not a JSON split file (an HTML page from the file host?); "
            f"download {split['file']} by hand from {split['page']}"
        ) from None
    if not all(k in data for k in ("train", "val", "test")):
        raise RealDatasetError(f"{name}: {path} lacks train/val/test lists; is it {split['file']}?")
    return path


# ---- split builders: staging folder -> {"train"|"val"|"test": [[relpath, label, classname], ...]} ------


def _prefixed(rows: list, prefix: str) -> list:
    return [[f"{prefix}/{p}" if prefix else p, int(y), c] for p, y, c in rows]


def _published_split(root: Path, name: str, split_file: Path) -> dict:
    data = json.loads(split_file.read_text())
    return {k: _prefixed(data[k], info(name)["image_dir"]) for k in ("train", "val", "test")}


def _new_split(root: Path, name: str, seed: int = 0) -> dict:
    """A fresh 50/20/30 split per class from class folders (Dassl's read_and_split_data), opt-in only."""
    spec = info(name)
    rules = spec.get("class_folders")
    if rules is None:
        raise RealDatasetError(
            f"{name}: a new split can only be made for datasets stored as class folders; "
            f"{name} needs its published split file {spec['split']['file']}"
        )
    image_dir = root / spec["image_dir"]
    classes = sorted(
        d.name
        for d in image_dir.iterdir()
        if d.is_dir() and d.name not in rules["ignore"] and not d.name.startswith(".")
    )
    rng = random.Random(seed)
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(classes):
        images = sorted(p.name for p in (image_dir / folder).iterdir() if not p.name.startswith("."))
        rng.shuffle(images)
        n_train, n_val = round(len(images) * 0.5), round(len(images) * 0.2)
        cname = rules["rename"].get(folder, folder)
        rows = [[f"{spec['image_dir']}/{folder}/{im}", label, cname] for im in images]
        out["train"] += rows[:n_train]
        out["val"] += rows[n_train : n_train + n_val]
        out["test"] += rows[n_train + n_val :]
    return out


def _fgvc_split(root: Path, name: str) -> dict:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = [line.strip() for line in (data / "variants.txt").read_text().splitlines() if line.strip()]
    label_of = {v: i for i, v in enumerate(variants)}
    out = {}
    for part in ("train", "val", "test"):
        rows = []
        for line in (data / f"images_variant_{part}.txt").read_text().splitlines():
            if not line.strip():
                continue
            image, variant = line.strip().split(" ", 1)
            rows.append([f"{info(name)['image_dir']}/{image}.jpg", label_of[variant], variant])
        out[part] = rows
    return out


def _folder_rows(root: Path, image_dir: str, folders: list[str], labels: dict[str, int], names: dict[str, str]) -> list:
    rows = []
    for folder in folders:
        files = sorted(
            p.name for p in (root / image_dir / folder).iterdir() if p.is_file() and not p.name.startswith(".")
        )
        rows += [[f"{image_dir}/{folder}/{f}", labels[folder], names[folder]] for f in files]
    return rows


def _expect_folders(name: str, where: Path, folders: list[str], expected: list[str]) -> None:
    if folders != expected:
        extra, lacking = sorted(set(folders) - set(expected)), sorted(set(expected) - set(folders))
        raise RealDatasetError(
            f"{name}: {where} should hold {len(expected)} class folders; unexpected {extra[:5]}, missing {lacking[:5]}"
        )


def _subfolders(path: Path) -> list[str]:
    return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def _wnid_split(root: Path, name: str) -> dict:
    ic = imagenet_classes()
    name_of = dict(zip(ic["wnids"], ic["classnames"], strict=True))
    image_dir = info(name)["image_dir"]
    folders = _subfolders(root / image_dir)
    expected = {"ImageNetA": ic["imagenet_a_wnids"], "ImageNetR": ic["imagenet_r_wnids"]}.get(name, ic["wnids"])
    _expect_folders(name, root / image_dir, folders, expected)
    rows = _folder_rows(root, image_dir, folders, {w: i for i, w in enumerate(folders)}, name_of)
    return {"train": [], "val": [], "test": rows}


def _numeric_split(root: Path, name: str) -> dict:
    names = imagenet_classes()["classnames"]
    image_dir = info(name)["image_dir"]
    folders = sorted(_subfolders(root / image_dir), key=lambda s: int(s) if s.isdigit() else -1)
    _expect_folders(name, root / image_dir, folders, [str(i) for i in range(len(names))])
    rows = _folder_rows(
        root, image_dir, folders, {str(i): i for i in range(len(names))}, {str(i): n for i, n in enumerate(names)}
    )
    return {"train": [], "val": [], "test": rows}


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _ood_images_split(root: Path, name: str) -> dict:
    """An OOD set (OpenOOD's): every image below ``image_dir``, whatever its folders, one class; test only."""
    image_dir = info(name)["image_dir"]
    files = sorted(
        p.relative_to(root).as_posix()
        for p in (root / image_dir).rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise RealDatasetError(f"{name}: no image below {root / image_dir}; expected layout: {info(name)['layout']}")
    return {"train": [], "val": [], "test": [[rel, 0, "ood image"] for rel in files]}


def _imagenet_split(root: Path, name: str) -> dict:
    ic = imagenet_classes()
    labels = {w: i for i, w in enumerate(ic["wnids"])}
    names = dict(zip(ic["wnids"], ic["classnames"], strict=True))
    out: dict[str, list] = {"val": []}
    for part, folder in (("train", "images/train"), ("test", "images/val")):
        _expect_folders(name, root / folder, _subfolders(root / folder), ic["wnids"])
        out[part] = _folder_rows(root, folder, ic["wnids"], labels, names)
    return out


def _check_split(name: str, root: Path, split: dict) -> None:
    """Every listed image exists, labels are 0..n-1 with one name each, n matches the catalogue."""
    spec = info(name)
    names: dict[int, str] = {}
    missing: list[str] = []
    for part in ("train", "val", "test"):
        for rel, label, cname in split[part]:
            if names.setdefault(label, cname) != cname:
                raise RealDatasetError(f"{name}: label {label} is called both {names[label]!r} and {cname!r}")
            if len(missing) < 5 and not (root / rel).is_file():
                missing.append(rel)
    if missing:
        raise RealDatasetError(
            f"{name}: the split lists images that the archives did not provide, e.g. "
            f"{missing}; expected layout under {root}: {spec['layout']}"
        )
    if sorted(names) != list(range(spec["n_classes"])):
        raise RealDatasetError(f"{name}: expected labels 0..{spec['n_classes'] - 1}, found {len(names)} labels")


# ---- preparation -----------------------------------------------------------------------------------


def _safe_extract(name: str, entry: dict, archive: Path, staging: Path, progress: bool, fetched: Path) -> None:
    """Extract, naming the dataset and the fix when the archive is damaged or unsafe."""
    try:
        dl.safe_extract(archive, staging, progress=progress)
    except dl.DownloadError as err:
        raise type(err)(
            f"{name}: {err}. {entry['name']} is not the archive {name} publishes: delete {fetched} "
            f"and run prepare again, or download it by hand from "
            f"{_by_hand(entry)}"
        ) from None


def _extract_all(cfg: dict, name: str, files: list, staging: Path, progress: bool) -> None:
    for entry, path, _ in files:
        if not entry.get("extract", True):
            shutil.copyfile(path, staging / entry["name"])
            continue
        _safe_extract(name, entry, path, staging, progress, path)
        for inner in entry.get("inner_archives", []):
            inner_path = staging / inner
            if not inner_path.is_file():
                raise RealDatasetError(
                    f"{name}: {entry['name']} should contain {inner}; it does not (a different release?)"
                )
            _safe_extract(name, entry, inner_path, staging, progress, path)
            inner_path.unlink()
    image_dir = info(name)["image_dir"]
    if image_dir and not (staging / image_dir).is_dir():
        raise RealDatasetError(
            f"{name}: after extraction there is no {image_dir}/; expected layout: {info(name)['layout']}"
        )


def _write_manifest(where: Path, name: str, files: list, split_origin: str) -> None:
    atomic_write_json(
        where / "PREPARED.json",
        {
            "dataset": name,
            "split_origin": split_origin,
            "files": [
                {"name": e["name"], "url": e.get("url"), "md5": e.get("md5"), "sha256": e.get("sha256"), "verified": ok}
                for e, _, ok in files
            ],
        },
    )


def prepare(cfg: dict, name: str, progress: bool = True) -> Path:
    """Fetch, verify, extract and split one real dataset; return its split file (see module docstring)."""
    final = data_root(cfg) / name
    split_path = final / split_filename(name)
    if split_path.is_file():
        return split_path
    kind = info(name)["split"]["kind"]
    if kind == "imagenet_folders":
        return _prepare_imagenet(cfg, name)
    if final.is_dir() and not any(final.iterdir()):
        final.rmdir()  # Snakemake creates the output's folder before the job runs; the rename below needs it gone
    if final.exists():
        raise RealDatasetError(
            f"{name}: {final} exists but holds no {split_path.name}, so it is not a "
            f"prepared dataset (left by hand or by another tool); move it away and re-run"
        )
    to_fetch = [
        e
        for e in resolve_files(cfg, name)
        if not (downloads_dir(cfg, name) / e["name"]).is_file() and not e.get("manual")
    ]
    require_space(downloads_dir(cfg, name), sum(e.get("size_bytes") or 0 for e in to_fetch))  # the recorded sizes
    with space_errors(downloads_dir(cfg, name)):
        files = fetch_files(cfg, name, progress=progress)
    split_file = fetch_split_file(cfg, name) if kind == "published" else None
    staging = data_root(cfg) / f".{name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    # extracted, the images take about their archives' size (JPEGs do not compress further)
    require_space(staging, sum(path.stat().st_size for entry, path, _ in files if entry.get("extract", True)))
    staging.mkdir(parents=True)
    try:
        with space_errors(final):
            _extract_all(cfg, name, files, staging, progress)
        if kind == "published":
            split = _published_split(staging, name, split_file) if split_file else _new_split(staging, name)
            origin = f"published {info(name)['split']['file']}" if split_file else "new random split (opt-in)"
        else:
            split = {
                "official_lists": _fgvc_split,
                "wnid_folders": _wnid_split,
                "numeric_folders": _numeric_split,
                "ood_images": _ood_images_split,
            }[kind](staging, name)
            origin = kind
        _check_split(name, staging, split)
        _write_manifest(staging, name, files, origin)
        atomic_write_json(staging / split_filename(name), split)  # last inside staging
        os.rename(staging, final)  # one step: the dataset appears complete or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("%s prepared at %s", name, final)
    return split_path


def _prepare_imagenet(cfg: dict, name: str) -> Path:
    root = data_root(cfg) / name
    need = [root / "images" / "train", root / "images" / "val"]
    if not all(p.is_dir() for p in need):
        files = info(name)["files"]
        raise RealDatasetError(
            f"{name} cannot be downloaded automatically (its licence requires an image-net.org login). "
            f"Download {files[0]['name']} and {files[1]['name']} from {info(name)['homepage']}, extract them "
            f"and put the images at {need[0]}/<wnid>/*.JPEG and {need[1]}/<wnid>/*.JPEG (1000 WordNet-id "
            f"folders each; sort the flat validation images into folders first), then run prepare again. "
            f"Missing: {[str(p) for p in need if not p.is_dir()]}"
        )
    split = _imagenet_split(root, name)
    _check_split(name, root, split)
    _write_manifest(root, name, [], "imagenet_folders (train = images/train, test = images/val)")
    atomic_write_json(root / split_filename(name), split)
    return root / split_filename(name)


def status(cfg: dict, name: str) -> dict:
    """One row of the status listing: missing / downloaded / verified / prepared, and where."""
    final = data_root(cfg) / name
    files = resolve_files(cfg, name)
    paths = [downloads_dir(cfg, name) / f["name"] for f in files]
    present = [p for p in paths if p.is_file()]
    if (final / split_filename(name)).is_file():
        state = "prepared"
    elif info(name)["split"]["kind"] == "imagenet_folders":
        state = "downloaded" if all((final / "images" / s).is_dir() for s in ("train", "val")) else "missing"
    elif len(present) < len(paths):
        state = "missing"
    else:
        state = "verified" if all(dl.is_verified(p) for p in paths) else "downloaded"
    manual = [f["name"] for f in files if f.get("manual")]
    detail = f"{len(present)}/{len(paths)} files in {downloads_dir(cfg, name)}"
    if manual and state == "missing":
        detail += f"; manual download: {', '.join(manual)}"
    return {
        "name": name,
        "kind": "real",
        "status": state,
        "path": str(final),
        "split_file": str(final / split_filename(name)),
        "downloads": str(downloads_dir(cfg, name)),
        "automatic": not manual,
        "detail": detail,
    }
