"""CoPrompt against the reference (``tests/reference/fixtures/coprompt.pt``, written by
``tests/reference/regenerate.py`` from ShuvenduRoy/CoPrompt's own ``CustomCLIP`` and trainer on the tiny
OpenAI-layout CLIP), and the two-view image loop it trains in."""

from __future__ import annotations

import torch

from test_reference_equivalence import (  # noqa: F401
    backbone,
    check_step,
    close,
    context,
    fixture,
    inputs,
    load_init,
    loop_step,
)
from vlprompt.methods import get_method
from vlprompt.training.loop import lr_at


def coprompt(backbone, fix: dict):  # noqa: F811
    ctx = context(backbone, fix, descriptions=fix["descriptions"])
    cls = get_method("coprompt")
    method = cls(cls.make_config({"depth": fix["settings"]["depth"], "n_ctx": fix["settings"]["n_ctx"]}), ctx)
    load_init(method, fix)
    method.draw_description = lambda: fix["settings"]["k"]
    return method


def test_one_step_equals_the_reference(backbone, inputs, tmp_path):  # noqa: F811
    fix = fixture("coprompt")
    method = coprompt(backbone, fix)
    assert method.config.distill_weight == fix["settings"]["W"] and method.config.epochs == 8
    close(method.description_features, fix["description_features"], what="description features (K, C, D)")
    images, views, labels = inputs["images"], fix["views"], fix["labels"]
    method.eval()
    with torch.no_grad():
        close(method.text_features(), fix["text_features"], what="text features with the adapter")
        close(method.image_features(images), fix["image_features"], what="image features with the adapter")
        close(method(images), fix["logits"], what="logits")
    method.train()
    pair = torch.stack([images, views], dim=1)  # (B, 2, 3, H, W): the prompted view, the frozen view
    with torch.no_grad():
        loss, parts = method.loss(pair, labels)
    for term in ("ce", "text", "image"):
        close(parts[term], fix["loss"][term], what=f"loss term {term}")
    close(loss, fix["loss"]["total"], what="total loss")
    assert lr_at(method.config, 0) == fix["lr"]
    loop_step(method, pair, labels, tmp_path)
    check_step(method, fix)


def test_a_removed_consistency_term_breaks_the_agreement(backbone, inputs):  # noqa: F811
    fix = fixture("coprompt")
    method = coprompt(backbone, fix).train()
    method.config = method.config.__class__(**{**method.config.__dict__, "distill_weight": 0.0})
    pair = torch.stack([inputs["images"], fix["views"]], dim=1)
    with torch.no_grad():
        loss, _ = method.loss(pair, fix["labels"])
    assert abs(loss.item() - fix["loss"]["total"]) > 1e-3


def test_two_views_are_independent_augmentations_and_view_one_is_the_single_stream(tmp_path):
    from PIL import Image

    from vlprompt.clip.features import ImageList, train_transform
    from vlprompt.training.image_runs import epoch_images

    for i in range(3):
        Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(tmp_path / f"{i}.png")
    paths = [f"{i}.png" for i in range(3)]
    tf = train_transform(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    two = epoch_images(tmp_path, paths, tf, seed=1, epoch=0, views=2)
    one = epoch_images(tmp_path, paths, tf, seed=1, epoch=0)
    assert isinstance(one, ImageList) and two[0].shape == (2, 3, 32, 32)
    assert torch.equal(two[0][0], one[0]) and not torch.equal(two[0][0], two[0][1])
    assert torch.equal(two[2], epoch_images(tmp_path, paths, tf, seed=1, epoch=0, views=2)[2])  # reproducible


def test_a_run_trains_on_two_views_and_resumes(tmp_path_factory):
    """Through the image runner: RandAugment on two views, metrics, and a killed run resumed to the same state."""

    from test_deep_prompts import run_and_resume

    full = run_and_resume(tmp_path_factory, "coprompt", {"epochs": 3, "batch_size": 2, "depth": 2})
    assert full["base_n"] == 4 and full["train"]["steps_per_epoch"] == 2
    assert full["method_info"]["descriptions_per_class"] > 1 and not full["method_info"]["descriptions_truncated"]
