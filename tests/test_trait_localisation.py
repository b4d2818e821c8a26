"""Trait localisation (vlprompt.training.trait_localisation): the scores on hand-made maps and masks, that the image's
own class prompt is the one scored, and the whole scoring of a Prompt-CAM model on a pocket dataset against a
hand-written loop over open_clip's blocks and the silhouettes averaged by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_pocket
from test_deep_prompts import bb  # noqa: F401  (the pocket CLIP, random weights)
from vlprompt.clip.prompting import PromptedTextEncoder
from vlprompt.data import pocket
from vlprompt.methods import MethodContext, get_method
from vlprompt.training import trait_localisation as tl


def test_patch_coverage_is_the_silhouette_averaged_over_each_patch():
    mask = np.zeros((8, 8), np.float32)
    mask[:4, :4] = 1  # the top-left patch, whole
    mask[4:, 4:6] = 1  # half of the bottom-right patch
    assert torch.equal(tl.patch_coverage(mask, 2), torch.tensor([1.0, 0.0, 0.0, 0.5]))
    with pytest.raises(ValueError, match="square"):
        tl.patch_coverage(np.zeros((4, 8)), 2)


def test_scores_by_hand():
    """Two images, two heads, four patches: the mass per head, the pointing game on the head-summed map, and the
    chance levels, computed by hand."""
    maps = torch.tensor(
        [
            [[0.4, 0.1, 0.0, 0.0], [0.1, 0.1, 0.1, 0.2]],  # image 0: head 0 on patch 0, head 1 spread
            [[0.0, 0.3, 0.1, 0.0], [0.0, 0.0, 0.0, 0.4]],  # image 1: heads disagree; the sum peaks at patch 3
        ]
    )
    coverage = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 1.0, 0.0, 0.25]])
    s = tl.localisation_scores(maps, coverage)
    expected_mass = torch.tensor([[0.45 / 0.5, 0.15 / 0.5], [0.3 / 0.4, 0.1 / 0.4]])
    assert torch.allclose(s["mass"], expected_mass)
    assert torch.equal(s["pointing"], torch.tensor([1.0, 0.0]))  # image 1's peak (patch 3) is a quarter object
    assert torch.allclose(s["area"], torch.tensor([1.5 / 4, 1.25 / 4]))
    assert torch.equal(s["pointing_chance"], torch.tensor([0.5, 0.25]))
    summary = tl.summarise(s)
    assert summary["images"] == 2 and summary["mass"] == pytest.approx(expected_mass.mean().item())
    assert summary["mass_per_head"] == pytest.approx(expected_mass.mean(0).tolist())
    assert summary["pointing"] == 0.5 and summary["pointing_chance"] == 0.375
    with pytest.raises(ValueError, match="disagree"):
        tl.localisation_scores(maps, coverage[:, :3])


def test_the_images_own_class_prompt_is_scored():
    """Class prompt c looks at patch c only; each image's object is at the patch of its class. Its own prompt's
    map scores 1; any other prompt's (the class token's place, or the next class's) scores 0."""
    classes, heads, patches = 3, 2, 4
    maps = torch.zeros(5, classes, heads, patches)
    for c in range(classes):
        maps[:, c, :, c] = 1.0
    labels = torch.tensor([0, 2, 1, 1, 0])
    coverage = torch.nn.functional.one_hot(labels, patches).float()
    own = tl.localisation_scores(tl.class_prompt_maps(maps, labels), coverage)
    assert own["mass"].min() == 1 and own["pointing"].min() == 1
    for wrong in (torch.zeros_like(labels), (labels + 1) % classes):
        other = tl.localisation_scores(tl.class_prompt_maps(maps, wrong), coverage)
        assert other["mass"].mean() < 1 and other["pointing"].mean() < 1


def hand_maps(model, images, prompts):
    """(B, C, heads, G): the reference's loop by hand (prompts prepended fresh at every block after ln_pre, dropped
    after it); the last block's attention weights from torch's own multi-head attention, per head."""
    v, c = model.visual, prompts[0].shape[0]
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = v.ln_pre(torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding)
    blocks = v.transformer.resblocks
    for j, block in enumerate(blocks[:-1]):
        x = block(torch.cat([prompts[j].expand(len(x), -1, -1), x], 1))[:, c:]
    h = blocks[-1].ln_1(torch.cat([prompts[-1].expand(len(x), -1, -1), x], 1))
    _, weights = blocks[-1].attn(h, h, h, need_weights=True, average_attn_weights=False)  # (B, heads, N, N)
    return weights[:, :, :c, c + 1 :].transpose(1, 2)  # rows: the class prompts; columns: the patches


def test_a_prompt_cam_model_scored_on_a_pocket_dataset_by_hand(tmp_path, bb):  # noqa: F811
    """score_rows on generated pocket images against the hand loop's maps of each image's own class prompt and the
    silhouettes averaged over each 8×8 patch by hand; scoring another class's prompt gives other numbers."""
    root, split = tiny_pocket(tmp_path, 2, 2, {"train": 1, "val": 1, "test": 3})
    world = pocket.World(n_colours=2, n_shapes=2)
    names = world.classnames
    ctx = MethodContext(bb, PromptedTextEncoder(bb.model), names, "a photo of a {}.", torch.device("cpu"), seed=1)
    cls = get_method("prompt_cam")
    method = cls(cls.make_config({}), ctx).train()  # scored in evaluation mode whatever the mode it is in
    got = tl.score_rows(method, split["test"], root, world, bb.preprocess, names, torch.device("cpu"), batch_size=5)
    assert method.training

    from PIL import Image

    rows = split["test"]
    images = torch.stack([bb.preprocess(Image.open(root / r[0]).convert("RGB")) for r in rows])
    labels = torch.tensor([names.index(r[2]) for r in rows])
    with torch.no_grad():
        maps = hand_maps(bb.model, images, [p.detach() for p in method.vision_prompts()])
    own = maps[torch.arange(len(rows)), labels].numpy()  # (M, heads, 16)
    size = world.image_size * 4
    cover = np.stack(
        [
            pocket.object_mask(root, world, r[0], r[1]).reshape(4, size // 4, 4, size // 4).mean((1, 3)).ravel()
            for r in rows
        ]
    )
    mass = (own * cover[:, None]).sum(-1) / own.sum(-1)
    hits = cover[np.arange(len(rows)), own.sum(1).argmax(-1)] >= 0.5
    assert got is not None and got["images"] == len(rows) == 12
    assert got["mass"] == pytest.approx(mass.mean(), rel=1e-5)
    assert got["mass_per_head"] == pytest.approx(mass.mean(0).tolist(), rel=1e-5)
    assert got["pointing"] == pytest.approx(hits.mean())
    assert got["area"] == pytest.approx(cover.mean(), rel=1e-5)
    assert 0 < got["area"] < 1 and 0 <= got["mass"] <= 1
    # the next class's prompt in place of the image's own: other maps, another mass
    other = maps[torch.arange(len(rows)), (labels + 1) % len(names)].numpy()
    assert abs((other * cover[:, None]).sum(-1).__truediv__(other.sum(-1)).mean() - got["mass"]) > 1e-4
    # only the trained classes are scored
    assert tl.score_rows(method, rows, root, world, bb.preprocess, ["a class it never saw"], "cpu") is None


def test_the_scores_reach_the_summary_and_the_reports_section(tmp_path):
    """A run's ``trait_localisation`` becomes the summary's trait columns (absent for runs without it) and a
    "Trait localisation" section of the report, in percent."""
    import json

    from vlprompt.analysis.aggregate import summary_table
    from vlprompt.analysis.report.render import _traits_section

    def run(method, seed, scores=None):
        m = {"method": method, "protocol": "fewshot", "dataset": "pocket_dark", "shots": 2, "seed": seed}
        m |= {"all_acc": 50.0, "trained": True}
        if scores is not None:
            m["trait_localisation"] = scores
        path = tmp_path / f"{method}{seed}.json"
        path.write_text(json.dumps(m))
        return path

    def scores(mass):
        return {
            "test": {"images": 4, "mass": mass, "area": 0.3, "pointing": 0.75, "pointing_chance": 0.25},
            "train": {"images": 4, "mass": mass / 2, "area": 0.2, "pointing": 0.5, "pointing_chance": 0.25},
        }

    files = [run("prompt_cam", 1, scores(0.5)), run("prompt_cam", 2, scores(0.7)), run("vpt_deep", 1)]
    df = summary_table({"shots": [2], "seeds": [1, 2]}, files)
    cam = df[df.method == "prompt_cam"]
    assert cam.trait_mass.tolist() == [0.5, 0.7] and cam.trait_mass_train.tolist() == [0.25, 0.35]
    assert df[df.method == "vpt_deep"].trait_mass.isna().all()
    section = _traits_section(df)
    assert section is not None and section.title == "Trait localisation"
    text = "\n".join(section.md)
    assert "60.0" in text and "30.0" in text and "75.0" in text  # mean mass, the area, the pointing, in percent
    assert _traits_section(df[df.method == "vpt_deep"].dropna(axis=1, how="all")) is None
