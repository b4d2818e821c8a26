"""The feature bank: idempotent, resumable after a kill with identical features, deterministic views."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from conftest import tiny_pocket
from vlprompt.clip import features
from vlprompt.clip.backbone import POCKET_MODEL, load_backbone
from vlprompt.clip.features import ExtractionSpec, FeatureBank, extract_split


@pytest.fixture(autouse=True, scope="module")
def _leave_the_global_rng_alone():
    """Models built here draw from torch's global generator: restore it, so that other modules'
    randomly initialised fixtures (conftest's session backbone) do not depend on these tests."""
    with torch.random.fork_rng(devices=[]):
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """8 classes (2 colours x 4 shapes), 2 train and 2 test images each."""
    return tiny_pocket(tmp_path_factory.mktemp("tiny"), 2, 4, {"train": 2, "test": 2})


@pytest.fixture(scope="module")
def shipped():
    return load_backbone(POCKET_MODEL, "pocket")


def snapshot(directory):
    return {p.name: p.stat().st_mtime_ns for p in sorted(directory.iterdir())}


def test_second_run_touches_nothing(tiny, pocket_random_backbone, tmp_path):
    root, split = tiny
    specs = [ExtractionSpec("test", split["test"], 1), ExtractionSpec("train_views", split["train"], 2)]
    for spec in specs:
        extract_split(pocket_random_backbone, root, spec, tmp_path, batch_size=5, progress=False)
    before = snapshot(tmp_path)
    assert set(before) == {"test.npy", "test.json", "train_views.npy", "train_views.json"}
    time.sleep(0.01)
    for spec in specs:
        extract_split(pocket_random_backbone, root, spec, tmp_path, batch_size=5, progress=False)
    assert snapshot(tmp_path) == before
    bank = FeatureBank(tmp_path)
    test = np.load(tmp_path / "test.npy", mmap_mode="r")
    assert test.dtype == np.float16 and test.shape == (16, pocket_random_backbone.embed_dim)
    assert isinstance(bank.array("train_views"), np.memmap)
    assert bank.take("train_views", [r[0] for r in split["train"][:3]]).shape == (2, 3, 64)
    with torch.no_grad():  # the bank holds encode_image of the test transform, in fp16
        img = pocket_random_backbone.preprocess(__import__("PIL.Image").Image.open(root / split["test"][3][0]))
        ref = pocket_random_backbone.model.encode_image(img[None])[0].numpy()
    np.testing.assert_allclose(test[3].astype(np.float32), ref, rtol=2e-3, atol=2e-3)


def test_other_inputs_re_extract(tiny, pocket_random_backbone, tmp_path):
    root, split = tiny
    extract_split(pocket_random_backbone, root, ExtractionSpec("val", split["test"][:4], 1), tmp_path, progress=False)
    extract_split(pocket_random_backbone, root, ExtractionSpec("val", split["test"][:6], 1), tmp_path, progress=False)
    assert np.load(tmp_path / "val.npy").shape[0] == 6 and len(FeatureBank(tmp_path).rows("val")) == 6


def test_interrupted_extraction_resumes_identically(tiny, pocket_random_backbone, tmp_path, monkeypatch):
    root, split = tiny
    spec = ExtractionSpec("train_views", split["train"], 3)  # 48 images in batches of 4
    ref = extract_split(pocket_random_backbone, root, spec, tmp_path / "ref", batch_size=4, progress=False)
    out = tmp_path / "run"
    with pytest.raises(features.ExtractionInterrupted):
        extract_split(
            pocket_random_backbone, root, spec, out, batch_size=4, progress=False, checkpoint_s=0, stop_after_batches=3
        )
    assert json.loads((out / "train_views.progress").read_text())["images"] == 12
    assert not (out / "train_views.npy").exists() and not (out / "train_views.json").exists()
    encoded = []
    model = pocket_random_backbone.model
    original = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: encoded.append(len(x)) or original(x))
    extract_split(pocket_random_backbone, root, spec, out, batch_size=4, progress=False)
    assert sum(encoded) == 48 - 12  # resumed after the recorded batches
    assert np.array_equal(np.load(out / "train_views.npy"), np.load(ref))
    assert sorted(p.name for p in out.iterdir()) == ["train_views.json", "train_views.npy"]


def test_killed_process_resumes_identically(tiny, shipped, tmp_path):
    """A real SIGKILL in the middle of an extraction (slowed down so that it is caught mid-way)."""
    root, split = tiny
    out = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import json, time, torch
        torch.set_num_threads(1)
        from vlprompt.clip.backbone import load_backbone
        from vlprompt.clip.features import ExtractionSpec, extract_split
        b = load_backbone({POCKET_MODEL!r}, "pocket")
        encode = b.model.encode_image
        b.model.encode_image = lambda x: (time.sleep(0.25), encode(x))[1]
        rows = json.loads({json.dumps(json.dumps(split["train"]))})
        extract_split(b, {str(root)!r}, ExtractionSpec("train_views", rows, 2), {str(out)!r},
                      batch_size=2, progress=False, checkpoint_s=0)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    marker = out / "train_views.progress"
    try:
        deadline = time.monotonic() + 90
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "no progress marker appeared"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = json.loads(marker.read_text())["images"]
    assert 0 < done < 32 and not (out / "train_views.npy").exists()
    spec = ExtractionSpec("train_views", split["train"], 2)
    extract_split(shipped, root, spec, out, batch_size=2, progress=False)
    ref = extract_split(shipped, root, spec, tmp_path / "ref", batch_size=2, progress=False)
    assert np.array_equal(np.load(out / "train_views.npy"), np.load(ref))


def test_views_are_deterministic_and_differ(tiny, shipped, tmp_path):
    root, split = tiny
    spec = ExtractionSpec("train_views", split["train"], 2)
    a = np.load(extract_split(shipped, root, spec, tmp_path / "a", batch_size=16, progress=False))
    b = np.load(extract_split(shipped, root, spec, tmp_path / "b", batch_size=16, workers=1, progress=False))
    assert np.array_equal(a, b)  # same views with a worker process and another batch size
    assert not np.allclose(a[0], a[1], atol=1e-2)  # views differ
    # an image's view does not depend on which other images are in the bank
    sub = ExtractionSpec("train_views", split["train"][5:9], 2)
    c = np.load(extract_split(shipped, root, sub, tmp_path / "c", batch_size=16, progress=False))
    np.testing.assert_allclose(c.astype(np.float32), a[:, 5:9].astype(np.float32), atol=2e-3, rtol=0)


def test_augmentation_leaves_the_global_generator_alone(tiny, shipped):
    root, split = tiny
    ds = features.ImageList(
        root, [r[0] for r in split["train"]], features.train_transform(32, (0.5,) * 3, (0.5,) * 3), view=1
    )
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    first = ds[2]
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(ds[2], first) and not torch.equal(ds[3], first)


def test_a_new_subset_encodes_only_the_images_it_adds(tiny, shipped, tmp_path, monkeypatch):
    """The store grows by subset: rows held by a sibling bank (same backbone and transform) are copied, only
    the others go through the encoder, and the result equals a bank extracted from scratch."""
    root, split = tiny
    first = ExtractionSpec("train_views", split["train"][:6], 2, name="shot1_seed1.train")
    second = ExtractionSpec("train_views", split["train"][3:10], 2, name="shot2_seed1.train")  # 3 shared, 4 new
    extract_split(shipped, root, first, tmp_path, batch_size=16, progress=False, reuse=True)
    encoded = []
    original = shipped.model.encode_image
    monkeypatch.setattr(shipped.model, "encode_image", lambda x: encoded.append(len(x)) or original(x))
    extract_split(shipped, root, second, tmp_path, batch_size=16, progress=False, reuse=True)
    monkeypatch.undo()
    assert sum(encoded) == 4 * 2  # 4 new images x 2 views
    meta = json.loads((tmp_path / "shot2_seed1.train.json").read_text())
    assert meta["copied_rows"] == 3 and [r[0] for r in meta["rows"]] == [r[0] for r in second.rows]
    scratch = np.load(
        extract_split(
            shipped, root, ExtractionSpec("train_views", second.rows, 2), tmp_path / "s", batch_size=16, progress=False
        )
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "shot2_seed1.train.npy").astype(np.float32), scratch.astype(np.float32), atol=2e-3, rtol=0
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "shot1_seed1.train.json",
        "shot1_seed1.train.npy",
        "shot2_seed1.train.json",
        "shot2_seed1.train.npy",
    ]
    # another transform (here: the test transform of the val banks) is never a source
    val = ExtractionSpec("val", split["train"][:6], 1, name="shot1_seed1.val")
    extract_split(shipped, root, val, tmp_path, batch_size=16, progress=False, reuse=True)
    assert json.loads((tmp_path / "shot1_seed1.val.json").read_text())["copied_rows"] == 0


def test_a_damaged_bank_is_named_with_the_command_that_rebuilds_it(tiny, pocket_random_backbone, tmp_path):
    from vlprompt.io import CorruptArtefactError

    root, split = tiny
    extract_split(pocket_random_backbone, root, ExtractionSpec("test", split["test"], 1), tmp_path, progress=False)
    npy = tmp_path / "test.npy"
    data = npy.read_bytes()
    npy.write_bytes(data[:-100])  # truncated
    with pytest.raises(CorruptArtefactError) as err:
        FeatureBank(tmp_path).rows("test")
    message = str(err.value)
    assert "\n" not in message and str(npy) in message and "bytes" in message
    assert f"snakemake --cores all --force {npy}" in message
    npy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(CorruptArtefactError, match="sha256"):
        FeatureBank(tmp_path).array("test")
    npy.write_bytes(data)
    assert FeatureBank(tmp_path).array("test").shape == (16, 64)
    (tmp_path / "test.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing or incomplete"):
        FeatureBank(tmp_path).rows("test")
