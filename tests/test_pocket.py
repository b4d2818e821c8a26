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
    b = json.loads(
        pocket.generate(
            ds, pocket.World(2, 2, label_order="shuffled", seed=3), tmp_path / "a", progress=False
        ).read_text()
    )
    by_path = {r[0]: r[2] for r in a["train"]}
    assert all(by_path[r[0]] == r[2] for r in b["train"])  # same file always shows the same class
    img = tmp_path / "a" / a["train"][0][0]
    before = np.asarray(__import__("PIL.Image").Image.open(img))
    pocket.generate(ds, pocket.World(2, 2), tmp_path / "a", strength=0.5, progress=False)
    after = np.asarray(__import__("PIL.Image").Image.open(img))
    assert np.abs(before.astype(int) - after.astype(int)).sum() > 0  # other strength: redrawn, not mixed


# --- the v2 world (docs/pocket_world.md) --------------------------------------------------------------------


def test_v1_drawing_is_frozen():
    """Pixels of v1 images, hashed with the drawing code as it was before the v2 world existed (9b3022b3)."""
    import hashlib

    h = hashlib.sha256()
    for style in pocket.STYLES:
        for c, s in [("red", "circle"), ("pink", "ring"), ("blue", "star")]:
            h.update(np.asarray(pocket.render(c, s, style, pocket._rng(0, style, "test", c, s, 1))).tobytes())
    assert h.hexdigest() == "14f1038b39637942f23a0324ed4c22552f8e4836907bc0c6545ae65ef8c0a4bd"


def test_disjoint_world_shares_no_colour_or_shape_between_base_and_new():
    world = pocket.world("v2")
    assert (world.n_colours, world.n_shapes, world.label_order) == (12, 12, "disjoint")
    base, new = world.classes[: world.n_base], world.classes[world.n_base :]
    assert len(base) == len(new) == 36 and len(set(world.classes)) == 72
    assert not {c for c, _ in base} & {c for c, _ in new} and not {s for _, s in base} & {s for _, s in new}
    held = [cs for cs in world.grid if pocket.held_out_in_pretraining(*cs)]
    assert len(held) == 18 and set(held) <= set(new)  # half of the new classes were never captioned
    seen = [cs for cs in world.grid if cs not in held]
    assert {c for c, _ in seen} == set(pocket.COLOURS) and {s for _, s in seen} == set(pocket.SHAPES)
    assert pocket.world("v2", label_order="alphabetical").classnames == sorted(f"{c} {s}" for c, s in world.grid)


def test_spurious_cue_only_in_base_training_images():
    world = pocket.world("v2", spurious="texture")

    def textures(label, split):
        return {world.nuisance(label, split, np.random.default_rng(i))[0] for i in range(60)}

    assert textures(7, "train") == {pocket.TEXTURES[7 % len(pocket.TEXTURES)]}  # base class: its cue, always
    assert textures(7, "test") == textures(7, "val") == set(pocket.TEXTURES)  # random elsewhere
    assert textures(world.n_base + 3, "train") == set(pocket.TEXTURES)  # new classes' training images too
    position = pocket.world("v2", spurious="position", spurious_p=0.5)
    quadrants = [position.nuisance(5, "train", np.random.default_rng(i))[1] for i in range(2000)]
    assert 0.59 < quadrants.count(5 % 4) / 2000 < 0.66  # p = 0.5 of the cue, plus a quarter of the random rest
    assert pocket.world("v2").nuisance(5, "train", np.random.default_rng(0))[1] is None  # no cue: no quadrant
    with pytest.raises(ValueError, match="need the v2 world"):
        pocket.world("v1", spurious="texture")
    with pytest.raises(ValueError, match="unknown pocket world 'v3'"):
        pocket.world("v3")


def test_v2_images_differ_by_texture_and_v1_refuses_v2_options():
    a = np.asarray(pocket.render("white", "heart", "photo", np.random.default_rng(0), version=2, texture="plain"))
    b = np.asarray(pocket.render("white", "heart", "photo", np.random.default_rng(0), version=2, texture="checkered"))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 3
    with pytest.raises(ValueError, match="v2 drawing"):
        pocket.render("red", "circle", "photo", np.random.default_rng(0), texture="striped")


def test_v2_dataset_with_cues_generates_and_redraws_when_the_cue_changes(tmp_path):
    ds = pocket.PocketDataset("pocket_test", "noisy", {"train": 2, "val": 1, "test": 1})
    world = pocket.world("v2", n_colours=4, n_shapes=4, spurious="texture")
    split = json.loads(pocket.generate(ds, world, tmp_path, progress=False).read_text())
    assert len(split["train"]) == 2 * 8 and {r[2] for r in split["train"]} == set(world.classnames)
    img = tmp_path / split["train"][0][0]  # a base class's training image
    before = np.asarray(__import__("PIL.Image").Image.open(img))
    pocket.generate(ds, pocket.world("v2", n_colours=4, n_shapes=4), tmp_path, progress=False)
    after = np.asarray(__import__("PIL.Image").Image.open(img))
    assert np.abs(before.astype(int) - after.astype(int)).sum() > 0  # other cue settings: redrawn


@pytest.mark.parametrize("version,style", [(1, "photo"), (1, "sketch"), (2, "cluttered")])
def test_object_mask_replays_the_generated_image(tmp_path, version, style):
    """The silhouette comes from the image's own rendering record: the replayed image equals the file on disk, the
    pixels are the same with or without the silhouette, and on a plain photo the object's colour lies inside it."""
    from PIL import Image

    world = pocket.World(n_colours=3, n_shapes=3) if version == 1 else pocket.world("v2", n_colours=4, n_shapes=4)
    ds = pocket.PocketDataset("pocket_test", style, {"train": 1, "val": 1, "test": 2})
    split = json.loads(pocket.generate(ds, world, tmp_path, progress=False).read_text())
    for relpath, label, _ in split["test"]:
        on_disk = np.asarray(Image.open(tmp_path / relpath))
        index = int(relpath.rsplit("/", 1)[1].split(".")[0])
        silhouette: list[np.ndarray] = []
        replayed = pocket.draw_image(world, style, "test", label, index, 1.0, silhouette)
        np.testing.assert_array_equal(np.asarray(replayed), on_disk)
        np.testing.assert_array_equal(np.asarray(pocket.draw_image(world, style, "test", label, index)), on_disk)
        mask = pocket.object_mask(tmp_path, world, relpath, label)
        np.testing.assert_array_equal(mask, silhouette[0])
        size = world.image_size
        assert mask.shape == (4 * size, 4 * size) and 0.1 < mask.mean() < 0.6 and set(np.unique(mask)) <= {0.0, 1.0}
        if style == "photo":  # pixels fully on the object carry its colour, those fully off it the background's
            cover = mask.reshape(size, 4, size, 4).mean((1, 3))
            colour = np.asarray(pocket.COLOURS[world.classes[label][0]], float)
            dist = np.abs(on_disk.astype(float) - colour).mean(-1)
            assert dist[cover == 1].mean() < 20 < dist[cover == 0].mean()
    with pytest.raises(ValueError, match="not an image of class"):
        pocket.object_mask(tmp_path, world, split["test"][0][0], (split["test"][0][1] + 1) % len(world.classes))
