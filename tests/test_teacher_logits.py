"""The teacher-logits bank: the frozen teacher's logits over V fixed views of a run's training images, computed once
(rule teacher_logits) and read by its students instead of running the teacher per batch (``teacher.logits: bank``)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TEST_ENV
from test_distillation import mini, trained_teacher  # noqa: F401  (the module's fixture and its teacher)

REPO = Path(__file__).resolve().parents[1]


def with_logits(cfg: dict, source: str, views: int = 3) -> dict:
    out = copy.deepcopy(cfg)
    out["teacher"].update(logits=source, bank_views=views)
    return out


@pytest.fixture(scope="module")
def bank(mini):  # noqa: F811
    """The bank of the mini experiment's teacher (pocket_dark, 2 shots, seed 1) over 3 views, built by the rule's
    command (``python -m vlprompt teacher-logits``, in this process)."""
    import json

    from vlprompt.cli import main
    from vlprompt.experiment.teacher import teacher_logits_stem

    cfg = with_logits(mini[0], "bank")
    trained_teacher(cfg)
    stem = teacher_logits_stem(cfg, "pocket_dark", 2, 1)
    resolved = Path(mini[1]) / "bank_config.json"
    resolved.write_text(json.dumps(cfg))
    args = ["--config", str(resolved), "--dataset", "pocket_dark", "--shots", "2", "--seed", "1", "--out", str(stem)]
    assert main(["teacher-logits", *args, "--quiet"]) in (0, None)
    return cfg, stem


def test_the_banks_logits_are_the_teachers_on_the_same_fixed_views(bank):
    from vlprompt.clip.features import ImageList, load_bank
    from vlprompt.data import registry
    from vlprompt.training.context import cached_backbone
    from vlprompt.training.teacher import load_teacher
    from vlprompt.training.teacher_logits import run_images, view_transform

    cfg, stem = bank
    arr, meta = load_bank(stem)
    rows, names = run_images(cfg, "pocket_dark", 2, 1)
    assert meta["rows"] == rows and meta["classnames"] == names and arr.shape == (3, len(rows), len(names))
    device = torch.device("cpu")
    teacher = load_teacher(cfg, "pocket_dark", 2, 1, names, device)
    transform = view_transform(cached_backbone(cfg, device), cfg)
    for view in range(3):  # view v of each image, one image at a time (the bank ran them in one batch: float32
        # sums in another order, so equal to 1e-6 relative, not bit for bit)
        images = ImageList(registry.image_root(cfg, "pocket_dark"), [r[0] for r in rows], transform, view=view)
        expected = torch.cat([teacher.logits(images[i][None], names) for i in range(len(rows))])
        torch.testing.assert_close(torch.from_numpy(np.array(arr[view])), expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(torch.from_numpy(np.array(arr[0])), torch.from_numpy(np.array(arr[1])))  # other views


def test_a_student_from_the_bank_equals_one_taught_per_batch_on_the_same_views(bank, tmp_path):
    from vlprompt.io import read_artefact_json
    from vlprompt.training import image_runs
    from vlprompt.training.records import load_model_state

    cfg, stem = bank
    states, records = {}, {}
    for source in ("bank", "fixed_views", "per_batch"):
        out = tmp_path / source
        image_runs.run(with_logits(cfg, source), "pocket_dark", "promptkd", 2, 1, out, progress=False)
        states[source] = load_model_state(out, torch.device("cpu"))["state"]
        records[source] = read_artefact_json(out / "metrics.json")["train"]["teacher_logits"]
    for key, value in states["bank"].items():
        torch.testing.assert_close(value, states["fixed_views"][key], rtol=0, atol=1e-6, msg=key)
    # per batch, the teacher sees fresh crops: another student (the bank is an option, not the reference)
    assert any(not torch.allclose(v, states["per_batch"][k]) for k, v in states["bank"].items())
    assert records["per_batch"] == {"logits": "per_batch"}
    assert records["fixed_views"] == {"logits": "fixed_views", "views": 3}
    assert records["bank"]["logits"] == "bank" and records["bank"]["views"] == 3
    assert records["bank"]["bank"] == f"{stem}.npy" and len(records["bank"]["sha256"]) == 64


def test_a_corrupt_bank_is_one_line_naming_it_and_the_rebuild(bank, tmp_path):
    import shutil

    from vlprompt.experiment.teacher import teacher_logits_stem
    from vlprompt.io import CorruptArtefactError
    from vlprompt.training.teacher_logits import cached_teacher

    cfg, stem = bank
    other = copy.deepcopy(cfg)
    other["results_root"] = str(tmp_path / "results")
    copy_stem = teacher_logits_stem(other, "pocket_dark", 2, 1)
    copy_stem.parent.mkdir(parents=True)
    for ext in (".npy", ".json"):
        shutil.copy(f"{stem}{ext}", f"{copy_stem}{ext}")
    with open(f"{copy_stem}.npy", "r+b") as f:  # one byte of the logits flipped, the size unchanged
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptArtefactError) as err:
        cached_teacher(other, "pocket_dark", 2, 1, None, torch.device("cpu"))
    message = str(err.value)
    assert "\n" not in message and f"{copy_stem}.npy" in message and "rebuild it with: snakemake" in message
    # truncated, it is found before a pipeline runs (as every sidecar-checked bank among the experiment's inputs)
    from vlprompt.experiment import grid
    from vlprompt.pipeline import integrity

    assert Path(f"{copy_stem}.npy") in grid.all_outputs(other)
    with open(f"{copy_stem}.npy", "r+b") as f:
        f.truncate(100)
    found = integrity.check([Path(f"{copy_stem}.npy")])
    assert len(found) == 1 and "when it was written" in found[0][1]


def test_the_banks_key_changes_with_the_teacher_and_the_views(mini):  # noqa: F811
    from vlprompt.experiment import grid
    from vlprompt.experiment.teacher import teacher_dir, teacher_logits_files, teacher_logits_stem

    cfg = with_logits(mini[0], "bank", 4)
    base = teacher_logits_stem(cfg, "pocket_dark", 2, 1)
    teacher = teacher_dir(cfg, "pocket_dark", 2, 1)  # .../teacher/<teacher key>/<dataset key>/2shot/seed1
    assert base.parts[-6:-2] == teacher.parts[-4:] and base.parts[-7] == "teacher_logits"
    assert base.parent.name.startswith(grid.views_key({"features": {**cfg["features"], "train_views": 4}}) + "__")
    for change in (
        {"bank_views": 5},
        {"backbone": {"model": "PocketCLIP-ViT-T8", "pretrained": None}},
        {"method": "ivlp"},
        {"overrides": {"epochs": 2, "depth_vision": 2, "depth_text": 2}},
    ):
        other = copy.deepcopy(cfg)
        other["teacher"].update(change)
        assert teacher_logits_stem(other, "pocket_dark", 2, 1) != base, change
    for other_run in ((4, 1), (2, 2)):
        assert teacher_logits_stem(cfg, "pocket_dark", *other_run) != base
    other = copy.deepcopy(cfg)
    other["features"]["crop_scale_min"] = 0.5
    assert teacher_logits_stem(other, "pocket_dark", 2, 1) != base  # another view recipe
    other = copy.deepcopy(cfg)
    other["experiment"], other["method_overrides"]["promptkd"]["epochs"] = "another", 3
    assert teacher_logits_stem(other, "pocket_dark", 2, 1) == base  # shared by the students of that teacher
    # a distilling run reads the bank only with the option on; the default reads the teacher alone
    bank_files = teacher_logits_files(cfg, "pocket_dark", 2, 1)
    assert set(bank_files) <= set(grid.train_inputs(cfg, "pocket_dark", "promptkd", 2, 1))
    assert set(bank_files) <= set(grid.train_inputs(cfg, "pocket_dark", "caspl_boost", 2, 1))
    assert teacher_logits_files(mini[0], "pocket_dark", 2, 1) == []
    assert not any("teacher_logits" in str(p) for p in grid.train_inputs(mini[0], "pocket_dark", "promptkd", 2, 1))


def test_pocket_distill_with_the_bank_plans_the_teacher_logits_rule(tmp_path):
    """`snakemake -n` on config/pocket_distill.yaml with ``teacher.logits: bank`` plans one teacher_logits job (shared
    by promptkd and caspl_boost); as shipped (per batch) it plans none."""
    from dry_runs import snakemake_calls

    shipped = yaml.safe_load((REPO / "config" / "pocket_distill.yaml").read_text())
    calls = []
    for source in ("bank", None):
        cfg = copy.deepcopy(shipped)
        if source:
            cfg["teacher"]["logits"] = source
        path = tmp_path / f"distill_{source}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        (tmp_path / f"wd_{source}").mkdir()
        calls.append(["-n", "--quiet", "rules", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / f"wd_{source}")])
        calls[-1] += ["--configfile", str(path)]
    bank, shipped_plan = snakemake_calls(calls, TEST_ENV)
    for proc in (bank, shipped_plan):
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    def jobs(proc) -> dict[str, int]:
        rows = (line.split() for line in (proc.stdout + proc.stderr).splitlines())
        return {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}

    assert jobs(bank)["teacher_logits"] == 1 and jobs(bank)["train_teacher"] == 1
    assert "teacher_logits" not in jobs(shipped_plan) and jobs(shipped_plan)["train_teacher"] == 1
    assert jobs(bank)["total"] == jobs(shipped_plan)["total"] + 1
