"""Folders of generated images (vlprompt.data.generated_images): the reader on a tiny folder of PNGs written here,
the folder's key, LAPT's training images and DiffTPT's generated views read from such folders through the real
code path (the CLI's extraction and training as the DAG's jobs run them), and the one line of every bad input."""

import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import prepare_run_inputs
from vlprompt.cli import main as cli
from vlprompt.data import generated_images as gi
from vlprompt.experiment import grid
from vlprompt.experiment.config import load_config, method_config_hash


def write_png(path, seed: int, size: int = 8) -> None:
    """A small PNG of random pixels (``size`` changes its byte count, ``seed`` its content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def label_folder(root, labels, per_label: int):
    """``root/<label with _>/<k>.png`` for every label."""
    for i, label in enumerate(labels):
        for k in range(per_label):
            write_png(root / label.replace(" ", "_") / f"{k:02d}.png", seed=100 * i + k)
    gi.forget()
    return root


@pytest.fixture(autouse=True)
def fresh_listings():
    gi.forget()
    yield
    gi.forget()


# ---- the reader -------------------------------------------------------------------------------------------------


def test_reads_images_by_label(tmp_path):
    root = label_folder(tmp_path / "by_label", ["red circle", "blue square"], 3)
    (root / "blue_square").rename(root / "Blue Square")  # case and spaces or _ are one label
    (root / "notes.txt").write_text("not an image")
    gi.forget()
    assert gi.labels_present(root) == {"red circle", "blue square"}
    drawn = gi.label_images(root, ["blue square", "red circle"], 2, seed=0)
    assert [label for _, label in drawn] == [0, 0, 1, 1]
    assert all(rel.startswith("Blue Square/") for rel, _ in drawn[:2])
    assert all(rel.startswith("red_circle/") for rel, _ in drawn[2:])
    assert drawn == gi.label_images(root, ["blue square", "red circle"], 2, seed=0)
    assert len({rel for rel, _ in gi.label_images(root, ["red circle"], 3, seed=5)}) == 3
    img = gi.read_image(root, drawn[0][0])
    assert img.mode == "RGB" and img.size == (8, 8)


def test_the_key_follows_the_folder(tmp_path):
    root = label_folder(tmp_path / "by_label", ["red circle", "blue square"], 2)
    key = gi.folder_key(root)
    gi.forget()
    assert gi.folder_key(root) == key and len(key) == 8
    write_png(root / "red_circle" / "00.png", seed=7, size=9)  # one image replaced
    gi.forget()
    changed = gi.folder_key(root)
    assert changed != key
    write_png(root / "red_circle" / "02.png", seed=8)  # one image added
    gi.forget()
    assert gi.folder_key(root) not in (key, changed)


def test_views_per_test_image_in_the_reference_layout(tmp_path):
    root = tmp_path / "by_image"
    for i in range(3):
        write_png(root / "cls" / f"img_{i}.png", seed=i)
    write_png(root / "cls" / "img.png", seed=9)  # the reference's copy of the original: not a view
    gi.forget()
    assert gi.view_paths(root, ["cls/img.jpg"], 2) == [["cls/img_0.png", "cls/img_1.png"]]
    with pytest.raises(gi.GeneratedImagesError, match=r"holds 3 of the 4 generated views of the test image cls/img"):
        gi.view_paths(root, ["cls/img.jpg"], 4)


def raises_one_line(call, message: str) -> None:
    with pytest.raises(gi.GeneratedImagesError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_bad_inputs_name_the_problem_and_the_fix(tmp_path):
    root = label_folder(tmp_path / "by_label", ["red circle"], 2)
    raises_one_line(lambda: gi.label_images(tmp_path / "absent", ["red circle"], 1, 0), "does not exist or is not")
    raises_one_line(lambda: gi.label_images(root, ["red circle", "blue square"], 1, 0), "no folder for the label 'blu")
    raises_one_line(lambda: gi.label_images(root, ["red circle"], 3, 0), "holds 2 images, 3 are read per label")
    (root / "red_circle" / "bad.png").write_bytes(b"not a png")
    raises_one_line(lambda: gi.read_image(root, "red_circle/bad.png"), "cannot read .*bad.png .*replace or delete")
    write_png(root / "red circle" / "x.png", seed=3)
    gi.forget()
    raises_one_line(lambda: gi.labels_present(root), "two folders for the label 'red circle'")


# ---- LAPT's data path -------------------------------------------------------------------------------------------


def test_lapt_trains_on_the_folder_images(pocket_random_backbone, tmp_path):
    from vlprompt.clip.backbone import PromptedTextEncoder
    from vlprompt.methods import MethodContext, get_method

    ids = ["blue circle", "red square"]
    root = label_folder(tmp_path / "by_label", [*ids, "green", "triangle", "zebra"], 3)
    ctx = MethodContext(
        backbone=pocket_random_backbone,
        encoder=PromptedTextEncoder(pocket_random_backbone.model),
        classnames=ids,
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=1,
        dataset="DTD",  # not a pocket dataset: the folder is the only source
        label_images=str(root),
    )
    cls = get_method("lapt")
    method = cls(cls.make_config({"synth_per_label": 2, "epochs": 1, "batch_size": 4}), ctx)
    assert method.negative_names and set(method.negative_names) <= {"green", "triangle"}  # zebra: not in the vocabulary
    feats, labels = method.synthesise(ctx)
    names = ids + method.negative_names
    drawn = gi.label_images(root, names, 2, seed=1)
    batch = torch.stack([pocket_random_backbone.preprocess(gi.read_image(root, rel)) for rel, _ in drawn])
    with torch.no_grad():
        expected = pocket_random_backbone.model.encode_image(batch).float()
    torch.testing.assert_close(feats, expected)
    assert labels.tolist() == [label for _, label in drawn]
    assert method.fit(ctx)
    info = method.run_info()
    assert info["image_folder"]["key"] == gi.folder_key(root) and "folder" in info["training_images"]
    shutil.rmtree(root / "red_square")
    gi.forget()
    with pytest.raises(gi.GeneratedImagesError, match="no folder for the label 'red square'"):
        method.synthesise(ctx)


# ---- through the CLI, as the DAG's jobs run -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A pocket miniature prepared by the CLI, with a folder of images per label for its base classes and two
    negatives, and a folder of two generated views per test image."""
    root = tmp_path_factory.mktemp("generated")
    cfg = yaml.safe_load(open("config/pocket_v1.yaml"))
    cfg.update(
        experiment="generated",
        data_root=str(root / "data"),
        results_root=str(root / "results"),
        reports_root=str(root / "reports"),
        datasets=["pocket_noisy"],
        shots=[1],
        seeds=[1],
        methods=["lapt", "difftpt"],
        method_overrides={
            "lapt": {"synth_per_label": 2, "epochs": 1, "batch_size": 8},
            "difftpt": {"views": 4, "generated_views": 2, "tta_steps": 1, "view_crop_scale_min": 0.5},
        },
    )
    cfg["pocket"]["per_class"] = {"train": 1, "val": 1, "test": 1}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare_run_inputs(path, "pocket_noisy", shots=1, test_bank=True)
    classes = json.loads(grid.classes_path(load_config(path), "pocket_noisy").read_text())
    base = [classes["classnames"][i] for i in classes["base"]]
    used = {w for name in classes["classnames"] for w in name.split()}
    negatives = [w for w in ("brown", "heart", "pink", "arrow") if w not in used][:2]
    label_folder(root / "by_label", [*base, *negatives], 3)
    test_rows = json.loads(grid.split_file(load_config(path), "pocket_noisy").read_text())["test"]
    for r, (relpath, _, _) in enumerate(test_rows):
        stem = relpath.rsplit(".", 1)[0]
        for i in range(2):
            write_png(root / "by_image" / f"{stem}_{i}.png", seed=1000 * r + i)
    cfg["generated_images"] = {"pocket_noisy": {"by_label": str(root / "by_label"), "by_image": str(root / "by_image")}}
    path.write_text(yaml.safe_dump(cfg))
    gi.forget()
    args = ["--config", str(path), "--dataset", "pocket_noisy", "--quiet"]
    assert cli(["extract", "--part", "test_views", "--views", "4", "--crop", "0.5", *args]) == 0
    return root, path, cfg, test_rows, negatives


def variant(root, cfg, name, **entry):
    """A copy of the config whose pocket_noisy folders are ``entry``'s."""
    changed = {**cfg, "generated_images": {"pocket_noisy": {**cfg["generated_images"]["pocket_noisy"], **entry}}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(changed))
    return path


def test_difftpt_reads_the_generated_views_through_the_bank(mini, tmp_path):
    from vlprompt.clip.features import FeatureBank

    root, path, cfg, test_rows, negatives = mini
    args = ["--config", str(path), "--dataset", "pocket_noisy", "--quiet"]
    assert cli(["extract", "--part", "generated_folder", "--views", "2", *args]) == 0
    loaded = load_config(path)
    key = gi.folder_key(root / "by_image")
    stem = grid.generated_views_stem(loaded, "pocket_noisy", "difftpt", 0)
    assert stem is not None and stem.name == f"test_generated2_folder-{key}"
    assert grid.Path(f"{stem}.npy") in grid.declared_inputs(loaded, "pocket_noisy", "difftpt", 0, None)
    bank = FeatureBank(stem.parent)
    assert bank.meta(stem.name)["generator"] == {"name": "folder", "folder": str(root / "by_image"), "key": key}
    views = bank.take(stem.name, [r[0] for r in test_rows[:2]]).float()  # (2 views, 2 images, D)
    assert views.shape[:2] == (2, 2) and not torch.allclose(views[0], views[1])
    out = tmp_path / "run"
    train = ["train", "--method", "difftpt", "--shots", "0", "--seed", "0", "--out", str(out), *args]
    assert cli(train) == 0
    generator = json.loads((out / "metrics.json").read_text())["method_info"]["generator"]
    assert generator["kind"] == "folder" and generator["key"] == key

    first = test_rows[0][0].rsplit(".", 1)[0]
    write_png(root / "by_image" / f"{first}_1.png", seed=5, size=9)  # a changed view: another bank
    gi.forget()
    assert grid.generated_views_stem(load_config(path), "pocket_noisy", "difftpt", 0).name != stem.name


def test_lapt_trains_from_the_folder_through_the_cli(mini, tmp_path):
    root, path, cfg, _, negatives = mini
    out = tmp_path / "run"
    args = ["--config", str(path), "--dataset", "pocket_noisy", "--quiet"]
    assert cli(["train", "--method", "lapt", "--shots", "1", "--seed", "1", "--out", str(out), *args]) == 0
    info = json.loads((out / "metrics.json").read_text())["method_info"]
    assert info["image_folder"]["key"] == gi.folder_key(root / "by_label")
    assert info["negative_labels"] and set(info["negative_labels"]) <= set(negatives)
    before = method_config_hash(load_config(path), "lapt", "pocket_noisy", 1)
    write_png(root / "by_label" / negatives[0] / "09.png", seed=11)  # the run's hash follows the folder
    gi.forget()
    assert method_config_hash(load_config(path), "lapt", "pocket_noisy", 1) != before
    assert method_config_hash(load_config(path), "coop", "pocket_noisy", 1) == method_config_hash(
        {**load_config(path), "generated_images": {}}, "coop", "pocket_noisy", 1
    )


def one_line(capsys, argv) -> str:
    assert cli(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"vlprompt {argv[0]}:")]
    assert len(lines) == 1
    return lines[0]


def test_every_bad_folder_is_one_line_where_the_user_meets_it(mini, tmp_path, capsys):
    root, path, cfg, test_rows, negatives = mini
    bad = tmp_path / "bad_label"
    shutil.copytree(root / "by_label", bad)
    base_folder = sorted(p for p in bad.iterdir() if p.name not in negatives)[0]
    shutil.rmtree(base_folder)
    missing = gi.label_key(base_folder.name)
    unreadable = tmp_path / "unreadable"
    shutil.copytree(root / "by_label", unreadable)
    for png in (unreadable / negatives[0]).iterdir():
        png.write_bytes(b"not a png")
    train = ["train", "--method", "lapt", "--shots", "1", "--seed", "1", "--dataset", "pocket_noisy", "--quiet"]
    cases = [
        (variant(tmp_path, cfg, "absent", by_label=str(tmp_path / "absent")), "does not exist or is not a folder"),
        (variant(tmp_path, cfg, "label", by_label=str(bad)), f"no folder for the label '{missing}'"),
        (variant(tmp_path, cfg, "unreadable", by_label=str(unreadable)), "cannot read .*replace or delete the file"),
    ]
    for config, message in cases:
        gi.forget()
        line = one_line(capsys, [*train, "--config", str(config), "--out", str(tmp_path / "run")])
        assert re.search(message, line), line
    few = yaml.safe_load(path.read_text())
    few["method_overrides"]["lapt"]["synth_per_label"] = 5
    (tmp_path / "few.yaml").write_text(yaml.safe_dump(few))
    line = one_line(capsys, [*train, "--config", str(tmp_path / "few.yaml"), "--out", str(tmp_path / "run")])
    assert "holds 3 images, 5 are read per label (synth_per_label); add images or lower synth_per_label" in line

    short = tmp_path / "short"
    shutil.copytree(root / "by_image", short)
    first = test_rows[0][0].rsplit(".", 1)[0]
    (short / f"{first}_1.png").unlink()
    extract = ["extract", "--part", "generated_folder", "--views", "2", "--dataset", "pocket_noisy", "--quiet"]
    gi.forget()
    line = one_line(capsys, [*extract, "--config", str(variant(tmp_path, cfg, "short", by_image=str(short)))])
    assert f"holds 1 of the 2 generated views of the test image {test_rows[0][0]}" in line
    (short / f"{first}_1.png").write_bytes(b"not a png")
    gi.forget()
    line = one_line(capsys, [*extract, "--config", str(variant(tmp_path, cfg, "short", by_image=str(short)))])
    assert "cannot read" in line and f"{first}_1.png" in line
    gi.forget()
    line = one_line(capsys, ["check-config", str(variant(tmp_path, cfg, "gone", by_image=str(tmp_path / "gone")))])
    assert "generated_images.pocket_noisy.by_image: the folder" in line and "does not exist" in line


def test_a_user_dataset_runs_lapt_and_difftpt_from_its_folders(tmp_path, capsys):
    """A non-pocket dataset (the user's own images): without folders both methods stop with one line naming the
    config entry; with them LAPT trains on the images per label and DiffTPT reads the generated views."""
    classes = ["cat", "dog", "fox", "owl"]
    for i, name in enumerate(classes):
        for k in range(4):
            write_png(tmp_path / "images" / name / f"{k}.png", seed=10 * i + k, size=12)
    cfg = {
        "experiment": "mine",
        "protocol": "fewshot",
        "data_root": str(tmp_path / "data"),
        "results_root": str(tmp_path / "results"),
        "backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": "pocket"},
        "datasets": ["mine"],
        "methods": ["lapt", "difftpt"],
        "shots": [1],
        "seeds": [1],
        "user_datasets": {"mine": {"root": str(tmp_path / "images")}},
        "method_overrides": {
            "lapt": {"synth_per_label": 2, "epochs": 1, "batch_size": 8},
            "difftpt": {"views": 3, "generated_views": 2, "tta_steps": 1, "view_crop_scale_min": 0.5},
        },
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare_run_inputs(path, "mine", shots=1)
    args = ["--config", str(path), "--dataset", "mine", "--quiet"]
    assert cli(["extract", "--part", "test_views", "--views", "3", "--crop", "0.5", *args]) == 0
    lapt = ["train", "--method", "lapt", "--shots", "1", "--seed", "1", "--out", str(tmp_path / "lapt"), *args]
    with pytest.raises(SystemExit, match="generated_images.mine.by_image"):
        cli(["extract", "--part", "generated_folder", "--views", "2", *args])
    assert cli(lapt) == 2
    assert "generated_images.mine.by_label" in capsys.readouterr().err

    label_folder(tmp_path / "by_label", [*classes, "green", "circle"], 2)
    test_rows = json.loads(grid.split_file(load_config(path), "mine").read_text())["test"]
    for r, (relpath, _, _) in enumerate(test_rows):
        for i in range(2):
            write_png(tmp_path / "by_image" / f"{relpath.rsplit('.', 1)[0]}_{i}.png", seed=500 + 2 * r + i)
    cfg["generated_images"] = {"mine": {"by_label": str(tmp_path / "by_label"), "by_image": str(tmp_path / "by_image")}}
    path.write_text(yaml.safe_dump(cfg))
    gi.forget()
    assert cli(lapt) == 0
    info = json.loads((tmp_path / "lapt" / "metrics.json").read_text())["method_info"]
    assert info["synthesised_images"] == 2 * (4 + len(info["negative_labels"])) and info["image_folder"]["images"] == 12
    assert cli(["extract", "--part", "generated_folder", "--views", "2", *args]) == 0
    out = tmp_path / "difftpt"
    assert cli(["train", "--method", "difftpt", "--shots", "0", "--seed", "0", "--out", str(out), *args]) == 0
    assert json.loads((out / "metrics.json").read_text())["method_info"]["generator"]["kind"] == "folder"


def test_a_user_dataset_without_its_label_folder_stops_lapt_in_one_line(pocket_random_backbone):
    from vlprompt.clip.backbone import PromptedTextEncoder
    from vlprompt.methods import MethodContext, MethodError, get_method

    ctx = MethodContext(
        backbone=pocket_random_backbone,
        encoder=PromptedTextEncoder(pocket_random_backbone.model),
        classnames=["red circle", "blue square"],
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=1,
        dataset="mine",
    )
    method = get_method("lapt")(get_method("lapt").make_config({"synth_per_label": 1}), ctx)
    with pytest.raises(MethodError, match=r"not a pocket dataset: name a folder .*generated_images\.mine\.by_label"):
        method.synthesise(ctx)
