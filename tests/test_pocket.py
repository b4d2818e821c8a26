import json

import numpy as np
import pytest

from vlprompt.data import pocket


def test_world_has_64_named_classes_in_a_seeded_order():
    world = pocket.World()
    names = world.classnames
    assert len(names) == 64 and len(set(names)) == 64
    assert all(len(n.split()) == 2 for n in names)
    assert names == pocket.World().classnames  # deterministic
    assert pocket.World(label_order="shuffled").classnames != pocket.World(seed=1, label_order="shuffled").classnames
    base_colours = {n.split()[0] for n in pocket.World(label_order="shuffled").classnames[:32]}
    assert len(base_colours) > 4  # shuffled: base half mixes colours
    assert names == sorted(names)  # default: alphabetical, as real datasets


@pytest.mark.parametrize("style", list(pocket.STYLES))
def test_render_is_deterministic_and_styles_differ(style):
    a = np.asarray(pocket.render("red", "circle", style, np.random.default_rng(0)))
    b = np.asarray(pocket.render("red", "circle", style, np.random.default_rng(0)))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    photo = np.asarray(pocket.render("red", "circle", "photo", np.random.default_rng(0)))
    if style != "photo":
        assert np.abs(a.astype(int) - photo.astype(int)).mean() > 3


def test_unknown_style_and_shape_are_named():
    with pytest.raises(ValueError, match="unknown style 'oil'"):
        pocket.render("red", "circle", "oil", np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_colours"):
        pocket.World(n_colours=40)


def test_generate_writes_coop_split_format_and_is_idempotent(tmp_path):
    world = pocket.World(n_colours=2, n_shapes=3)
    ds = pocket.PocketDataset("pocket_test", "noisy", {"train": 3, "val": 1, "test": 2})
    split_file = pocket.generate(ds, world, tmp_path, progress=False)
    assert split_file.name == "split_zhou_pocket_test.json"
    split = json.loads(split_file.read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 18, "val": 6, "test": 12}
    rel, label, name = split["train"][0]
    assert (tmp_path / rel).is_file() and name == world.classnames[label]
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    pixels = np.asarray(__import__("PIL.Image").Image.open(tmp_path / rel))
    pocket.generate(ds, world, tmp_path, progress=False)
    assert mtimes == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    # a fresh directory gives identical pixels
    other = tmp_path / "again"
    pocket.generate(ds, world, other, progress=False)
    np.testing.assert_array_equal(pixels, np.asarray(__import__("PIL.Image").Image.open(other / rel)))


def test_pixels_do_not_depend_on_label_order_and_changed_settings_redraw(tmp_path):
    ds = pocket.PocketDataset("pocket_test", "dark", {"train": 2, "val": 1, "test": 1})
    a = json.loads(pocket.generate(ds, pocket.World(2, 2), tmp_path / "a", progress=False).read_text())
    b = json.loads(pocket.generate(ds, pocket.World(2, 2, label_order="shuffled", seed=3), tmp_path / "a",
                                   progress=False).read_text())
    by_path = {r[0]: r[2] for r in a["train"]}
    assert all(by_path[r[0]] == r[2] for r in b["train"])  # same file always shows the same class
    img = tmp_path / "a" / a["train"][0][0]
    before = np.asarray(__import__("PIL.Image").Image.open(img))
    pocket.generate(ds, pocket.World(2, 2), tmp_path / "a", strength=0.5, progress=False)
    after = np.asarray(__import__("PIL.Image").Image.open(img))
    assert np.abs(before.astype(int) - after.astype(int)).sum() > 0  # other strength: redrawn, not mixed
