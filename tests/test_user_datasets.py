"""A user's own images as a dataset (config ``user_datasets``): layouts, class names, the check, the split, the key.

The folder is drawn from the pocket world (tests/user_folders.py) with hostile class names (Japanese, Arabic,
accents, spaces, parentheses, apostrophes, a `/` from a classnames file, two names differing only in case) and
broken files (a truncated JPEG, a CMYK JPEG, a 16-bit PNG, a .txt, an EXIF-rotated JPEG, a duplicate that the
seeded split puts in two splits). The DAG runs on it are in tests/test_user_datasets_dag.py.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml

from user_folders import BROKEN, CLASSES, PER_CLASS, draw, write_csv, write_folder
from vlprompt.cli import main as cli
from vlprompt.data import registry, splits, user
from vlprompt.experiment.config import ConfigError, load_config, validate


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("user") / "images")


def config(tmp_path: Path, root: Path, **entry) -> dict:
    entry = {"root": str(root), "classnames": str(root.parent / "classnames.tsv"), **entry}
    entry = {k: v for k, v in entry.items() if v is not None}
    return {
        "experiment": "mine",
        "protocol": "base2new",
        "data_root": str(tmp_path / "data"),
        "results_root": str(tmp_path / "results"),
        "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": "pocket"},
        "datasets": ["shapes"],
        "methods": ["zeroshot", "coop"],
        "shots": [1],
        "seeds": [1],
        "user_datasets": {"shapes": entry},
    }


def write_config(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def test_the_check_names_every_problem(tmp_path, folder, capsys):
    path = write_config(tmp_path, config(tmp_path, folder))
    with pytest.raises(SystemExit):
        cli(["datasets", "--config", str(path), "--check", "shapes"])
    out = capsys.readouterr().out
    assert "truncated.jpg" in out and "unreadable" in out and "skip_unreadable: true" in out
    assert "not ready" in out
    assert "CMYK 1" in out and "16-bit 1" in out and "EXIF-rotated 1" in out
    assert "Cross/notes.txt" in out and "not an image" in out
    assert "['Cross', 'cross'] differ only in case" in out
    assert f"8 classes, {8 * PER_CLASS + 4} images" in out


def test_the_check_exits_1_on_errors_and_0_with_skip_unreadable(tmp_path, folder, capsys):
    path = write_config(tmp_path, config(tmp_path, folder))
    with pytest.raises(SystemExit) as stop:
        cli(["datasets", "--config", str(path), "--check", "shapes"])
    assert stop.value.code == 1
    capsys.readouterr()
    path = write_config(tmp_path, config(tmp_path, folder, skip_unreadable=True))
    assert cli(["datasets", "--config", str(path), "--check", "shapes"]) == 0
    out = capsys.readouterr().out
    assert "skipped (skip_unreadable: true)" in out and "ready to prepare" in out
    # the duplicate lands in two splits: a leak, named with both files and their splits
    leak = next(line for line in out.splitlines() if "a leak" in line)
    assert "o'brien's star/000.png" in leak and "o'brien's star/copy.png" in leak
    assert "(test)" in leak and "(train)" in leak
    for line in ("train", "val", "test"):
        assert any(row.strip().startswith(line) and "per class min" in row for row in out.splitlines())


def test_every_broken_file_is_named_in_the_report(tmp_path, folder):
    cfg = validate(config(tmp_path, folder, skip_unreadable=True))
    report = user.check(cfg, "shapes")
    text = json.dumps(report, ensure_ascii=False)
    for name in BROKEN:
        assert name.split("/")[1] in text, name
    assert [r for r, _ in report["skipped"]] == ["猫_ねこ/truncated.jpg"]
    assert report["conversions"] == {"16-bit": 1, "CMYK": 1, "EXIF-rotated": 1}


def test_prepare_writes_the_split_under_data_never_in_the_users_folder(tmp_path, folder):
    cfg = validate(config(tmp_path, folder, skip_unreadable=True))
    mode = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")] if p.is_dir()}
    for p in mode:  # the user's folder is read-only
        p.chmod(mode[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        split_file = registry.prepare(cfg, "shapes")
    finally:
        for p, m in mode.items():
            p.chmod(m)
    assert split_file.parent == Path(cfg["data_root"]) / registry.dataset_key(cfg, "shapes")
    assert split_file.name == "split_zhou_shapes.json"
    split = splits.read_split(split_file)  # CoOp's format, paths relative to the root
    names = splits.classnames(split["train"] + split["val"] + split["test"])
    assert "AC/DC" in names and "猫 ねこ" in names and "crème brûlée (dessert)" in names and "o'brien's star" in names
    assert "Cross" in names and "cross" in names
    rows = split["train"] + split["val"] + split["test"]
    assert all((folder / r[0]).is_file() for r in rows)
    assert "猫_ねこ/truncated.jpg" not in {r[0] for r in rows}
    record = json.loads((split_file.parent / "PREPARED.json").read_text())
    assert record["skipped"][0][0] == "猫_ねこ/truncated.jpg" and record["root"] == str(folder)
    assert record["split_origin"].startswith("made here: stratified 0.5/0.2/0.3, seed 0")
    assert not any(p.name.startswith("split_zhou") for p in folder.rglob("*"))
    # the class with the most images: 11 (10 + the duplicate) -> round(5.5)=6 train, round(2.2)=2 val, 3 test
    star = [r for r in rows if r[2] == "o'brien's star"]
    assert len(star) == 11
    assert sum(r in split["train"] for r in star) == 6 and sum(r in split["val"] for r in star) == 2


def test_prepare_stops_on_unreadable_files_naming_them(tmp_path, folder):
    cfg = validate(config(tmp_path, folder))
    with pytest.raises(registry.DatasetError, match=r"1 unreadable .*truncated\.jpg.*skip_unreadable: true"):
        registry.prepare(cfg, "shapes")
    assert not list(Path(cfg["data_root"]).glob("shapes-*/split_zhou_shapes.json"))


def test_the_list_of_unreadable_files_stops_at_20_with_a_count(tmp_path):
    root = write_folder(tmp_path / "images", broken=False)
    for i in range(23):
        (root / "AC_DC" / f"bad{i:02d}.png").write_bytes(b"not a png")
    cfg = validate(config(tmp_path, root))
    errors = user.check(cfg, "shapes")["errors"]
    assert len(errors) == 1 and "23 unreadable" in errors[0] and "... and 3 more" in errors[0]


def test_the_key_follows_the_files_and_two_roots_never_share_one(tmp_path):
    a = write_folder(tmp_path / "a" / "images", broken=False)
    b = write_folder(tmp_path / "b" / "images", broken=False)
    cfg_a, cfg_b = validate(config(tmp_path, a)), validate(config(tmp_path, b))
    key = registry.dataset_key(cfg_a, "shapes")
    assert key.startswith("shapes-") and key != registry.dataset_key(cfg_b, "shapes")
    user.forget()
    assert registry.dataset_key(cfg_a, "shapes") == key  # nothing changed: the same key
    draw("red", "circle", 50).save(a / "plain_ring" / "003.png")  # one image replaced
    user.forget()
    assert registry.dataset_key(cfg_a, "shapes") != key
    # the template makes prompts, not the data: the same key; the split settings make the data: another key
    user.forget()
    now = registry.dataset_key(cfg_a, "shapes")
    assert registry.dataset_key(validate(config(tmp_path, a, template="a photo of {}, a shape.")), "shapes") == now
    assert registry.dataset_key(validate(config(tmp_path, a, split={"seed": 1})), "shapes") != now


def test_a_moved_folder_is_an_error_naming_where_it_was_prepared(tmp_path, caplog):
    root = write_folder(tmp_path / "images", broken=False)
    cfg = validate(config(tmp_path, root))
    registry.prepare(cfg, "shapes")
    key = registry.dataset_key(cfg, "shapes")
    root.rename(tmp_path / "moved")
    user.forget()
    with pytest.raises(ConfigError, match=rf"root {root} is not a folder \(it was there when {key} was prepared"):
        validate(config(tmp_path, root))
    cfg = validate(config(tmp_path, tmp_path / "moved"))  # the new place: prepared again, saying from where
    with caplog.at_level(logging.WARNING):
        registry.prepare(cfg, "shapes")
    assert f"was prepared from {root}, which is gone; it is now read from {tmp_path / 'moved'}" in caplog.text


def test_csv_and_imagefolder_layouts_give_the_same_split(tmp_path):
    root = write_folder(tmp_path / "images", broken=False)
    table = write_csv(root, tmp_path / "labels.csv")
    by_folder = user.check(validate(config(tmp_path, root)), "shapes")["split"]
    by_csv = user.check(validate(config(tmp_path, root, layout="csv", csv=str(table))), "shapes")["split"]
    assert by_csv == by_folder and by_csv["test"]


def test_a_tsv_per_split_and_a_prepared_imagefolder_give_their_split(tmp_path):
    root = write_folder(tmp_path / "flat", broken=False)
    split = user.check(validate(config(tmp_path, root)), "shapes")["split"]
    labels = {v: k for k, v in enumerate(sorted(CLASSES))}
    folders = {}
    for part, rows in split.items():  # the same images laid out as root/<split>/<label>/<image>
        for rel, _, _ in rows:
            dst = tmp_path / "presplit" / part / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes((root / rel).read_bytes())
            folders.setdefault(part, []).append([f"{part}/{rel}", rel.split("/")[0]])
    pre = user.check(validate(config(tmp_path, tmp_path / "presplit", layout="imagefolder_split")), "shapes")
    assert pre["split_origin"] == "given (imagefolder_split)"
    assert {p: sorted(r[0].split("/", 1)[1] for r in rows) for p, rows in pre["split"].items()} == {
        p: sorted(r[0] for r in rows) for p, rows in split.items()
    }
    tables = {}
    for part, rows in folders.items():
        tables[part] = str(tmp_path / f"{part}.tsv")
        Path(tables[part]).write_text("".join(f"{r}\t{lab}\n" for r, lab in rows))
    by_tsv = user.check(validate(config(tmp_path, tmp_path / "presplit", layout="csv", csv=tables)), "shapes")
    # a given split keeps its rows' order (the few-shot sampler's order, as CoOp's split files): equal as sets
    assert {p: sorted(r) for p, r in by_tsv["split"].items()} == {p: sorted(r) for p, r in pre["split"].items()}
    assert by_tsv["split_origin"] == "given (csv)"
    assert all(r[1] == labels[r[0].split("/")[1]] for r in pre["split"]["test"])


def test_without_val_the_prepared_imagefolder_draws_it_from_train(tmp_path):
    root = tmp_path / "presplit"
    for part, n in (("train", 7), ("test", 3)):
        for folder, (colour, shape) in list(CLASSES.items())[:2]:
            (root / part / folder).mkdir(parents=True)
            for i in range(n):
                draw(colour, shape, i + 10 * (part == "test")).save(root / part / folder / f"{i}.png")
    report = user.check(validate(config(tmp_path, root, layout="imagefolder_split", classnames=None)), "shapes")
    assert report["split_origin"] == "given (imagefolder_split), val drawn from train"
    assert [report["counts"][p]["images"] for p in ("train", "val", "test")] == [10, 4, 6]


def test_a_coop_split_file_is_read_as_it_is(tmp_path):
    root = write_folder(tmp_path / "images", broken=False)
    split = user.check(validate(config(tmp_path, root)), "shapes")["split"]
    (root / "split_zhou_Mine.json").write_text(json.dumps(split))
    report = user.check(validate(config(tmp_path, root, layout="coop_split", classnames=None)), "shapes")
    assert report["split"] == split and report["split_origin"] == "given (coop_split)"


def test_classnames_from_json_and_explicit_base_and_new(tmp_path):
    root = write_folder(tmp_path / "images", broken=False)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"plain_ring": "ring of pink", "AC_DC": "AC/DC"}, ensure_ascii=False))
    cfg = validate(config(tmp_path, root, classnames=str(names), base=["ring of pink", "AC/DC"]))
    path = write_config(tmp_path, cfg)
    assert cli(["prepare", "--config", str(path), "--dataset", "shapes", "--quiet"]) == 0
    out = tmp_path / "classes.json"
    assert cli(["classes", "--config", str(path), "--dataset", "shapes", "--out", str(out)]) == 0
    classes = json.loads(out.read_text())
    assert [classes["classnames"][i] for i in classes["base"]] == ["AC/DC", "ring of pink"]
    assert len(classes["new"]) == 6 and not set(classes["new"]) & set(classes["base"])


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("empty", r"empty class\(es\) \['zz empty'\]"),
        ("few", r"class 'few' has 2 image\(s\), too few for a 0.5/0.2/0.3 split"),
        ("clash", r"labels \['a b', 'a_b'\] all become the class name 'a b'"),
    ],
)
def test_classes_that_cannot_make_a_dataset_are_errors(tmp_path, change, error):
    root = write_folder(tmp_path / "images", broken=False)
    if change == "empty":
        (root / "zz empty").mkdir()
    elif change == "few":
        (root / "few").mkdir()
        for i in range(2):
            draw("red", "star", i).save(root / "few" / f"{i}.png")
    else:
        for label in ("a b", "a_b"):
            (root / label).mkdir()
            for i in range(5):
                draw("red", "star", i).save(root / label / f"{i}.png")
    cfg = validate(config(tmp_path, root))
    with pytest.raises((registry.DatasetError, user.UserDatasetError), match=error):
        registry.prepare(cfg, "shapes")


def test_too_few_images_for_the_shots_is_the_published_sets_error(tmp_path):
    root = write_folder(tmp_path / "images", broken=False)
    path = write_config(tmp_path, config(tmp_path, root))
    assert cli(["prepare", "--config", str(path), "--dataset", "shapes", "--quiet"]) == 0
    out = tmp_path / "shot8.json"
    code = cli(
        ["fewshot", "--config", str(path), "--dataset", "shapes", "--shots", "8", "--seed", "1", "--out", str(out)]
    )
    assert code == 2 and not out.exists()
    with pytest.raises(splits.SplitError, match=r"class 'AC/DC' \(label 0\) has only 5 train images, fewer than the 8"):
        splits.fewshot_sample(splits.read_split(registry.split_path(validate(config(tmp_path, root)), "shapes")), 8, 1)


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ({"layout": "csv"}, r"layout csv needs `csv: <file>`"),
        ({"split": {"train": 0.5, "val": 0.2, "test": 0.2}}, r"train \+ val \+ test must be 1"),
        ({"template": "a photo"}, r"template needs '\{\}'"),
        ({"colour": "red"}, r"unknown key `user_datasets\.shapes\.colour`"),
        ({"classnames": "/nonexistent/names.tsv"}, r"the classnames file /nonexistent/names.tsv does not exist"),
    ],
)
def test_a_bad_entry_is_one_line_naming_it(tmp_path, folder, entry, error):
    with pytest.raises((ConfigError, user.UserDatasetError), match=error):
        cfg = validate(config(tmp_path, folder, **entry))
        user.check(cfg, "shapes")


def test_a_user_dataset_cannot_take_a_registered_name(tmp_path, folder):
    cfg = config(tmp_path, folder)
    cfg["user_datasets"] = {"pocket_dark": cfg["user_datasets"]["shapes"]}
    cfg["datasets"] = ["pocket_dark"]
    with pytest.raises(ConfigError, match="'pocket_dark' is a registered dataset"):
        validate(cfg)


def test_datasets_lists_a_user_dataset_with_its_state(tmp_path, capsys):
    root = write_folder(tmp_path / "images", broken=False)
    path = write_config(tmp_path, config(tmp_path, root))
    assert cli(["datasets", "--config", str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("shapes "))
    assert " missing " in row and f"your images at {root}" in row
    assert cli(["prepare", "--config", str(path), "--dataset", "shapes", "--quiet"]) == 0
    capsys.readouterr()
    assert cli(["datasets", "--config", str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("shapes "))
    assert " prepared " in row


def test_images_are_read_as_the_backbone_expects(tmp_path, folder):
    from PIL import Image

    from vlprompt.data.images import open_rgb

    deep = open_rgb(folder / "plain_ring" / "deep.png", exif=True)
    grey = np.asarray(draw("pink", "ring", 99).convert("L"))
    assert deep.mode == "RGB" and np.abs(np.asarray(deep)[..., 0].astype(int) - grey).max() <= 1  # not clipped
    with Image.open(folder / "cross" / "rotated.jpg") as img:
        assert img.size == (32, 32)
    wide = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    wide.save(tmp_path / "wide.jpg", exif=exif)
    assert open_rgb(tmp_path / "wide.jpg", exif=True).size == (20, 40)  # turned upright
    assert open_rgb(tmp_path / "wide.jpg").size == (40, 20)  # the published sets: as Dassl reads them
    assert open_rgb(folder / "قطة" / "cmyk.jpg", exif=True).mode == "RGB"


def test_template_tables_and_descriptions_fall_back_to_the_users_template(tmp_path, folder, monkeypatch):
    from vlprompt.clip.prompting import method_templates
    from vlprompt.data import descriptions

    cfg = validate(config(tmp_path, folder, template="a microscope image of {}."))
    template = registry.get_dataset("shapes").template
    assert template == "a microscope image of {}."
    assert method_templates("tip_adapter", "shapes", template) == [template]
    monkeypatch.setenv("VLPROMPT_DESCRIPTIONS", str(tmp_path))
    assert descriptions.load_descriptions("shapes", ["AC/DC"]) == {"AC/DC": ["a microscope image of AC/DC."]}
    record = descriptions.source_record(None, "shapes", "cupl")
    assert record["file"] is None and "user dataset without" in record["fallback"]
    fudd = descriptions.differential_descriptions("shapes", ["AC/DC", "plain ring"])
    assert fudd.pair("AC/DC", "plain ring") == (["a microscope image of AC/DC."], ["a microscope image of plain ring."])
    assert "user dataset without shapes_prompt_pairs.json" in fudd.source
    with pytest.raises(descriptions.DescriptionError, match="DTD_prompt_pairs.json does not exist"):
        descriptions.differential_descriptions("DTD", ["banded"])  # a published dataset still needs FuDD's files
    (tmp_path / "cupl").mkdir()
    (tmp_path / "cupl" / "shapes.json").write_text(json.dumps({"AC/DC": ["a loud band."]}))
    descriptions._read.cache_clear()
    assert descriptions.load_descriptions("shapes", ["AC/DC"]) == {"AC/DC": ["a loud band."]}
    assert cfg["user_datasets"]["shapes"]["template"] == template


def test_the_default_config_has_no_user_datasets_and_keeps_its_keys():
    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "config" / "config.yaml")
    assert "user_datasets" not in cfg
    assert all(registry.get_dataset(d).kind != "user" for d in cfg["datasets"])
    assert os.path.basename(str(registry.dataset_dir(cfg, cfg["datasets"][0]))).startswith(cfg["datasets"][0] + "-")


def test_a_users_images_are_encoded_upright_and_their_banks_say_so(tmp_path, pocket_random_backbone):
    from PIL import Image

    from vlprompt.clip.features import ExtractionSpec, ImageList, extraction_meta

    img = draw("red", "arrow", 0).resize((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 8  # rotated 270 degrees
    img.save(tmp_path / "turned.jpg", exif=exif)
    seen = []
    ImageList(tmp_path, ["turned.jpg"], seen.append, exif=True)[0]
    ImageList(tmp_path, ["turned.jpg"], seen.append)[0]
    assert [s.size for s in seen] == [(20, 40), (40, 20)]
    rows = [["turned.jpg", 0, "arrow"]]
    plain = extraction_meta(pocket_random_backbone, ExtractionSpec("test", rows, 1), "t", 1.0)
    mine = extraction_meta(pocket_random_backbone, ExtractionSpec("test", rows, 1, exif=True), "t", 1.0)
    assert "exif" not in plain and mine == {**plain, "exif": True}


def test_per_dataset_files_fall_back_to_imagenets_entry_for_a_users_dataset(tmp_path, folder):
    from vlprompt.methods.atprompt import per_dataset

    validate(config(tmp_path, folder))
    assert per_dataset("atprompt_attributes.json", "shapes", "x") == per_dataset(
        "atprompt_attributes.json", "ImageNet", "x"
    )
    from vlprompt.methods.base import MethodError

    with pytest.raises(MethodError, match="no x for dataset 'unknown'"):
        per_dataset("atprompt_attributes.json", "unknown", "x")
