"""Tip-Adapter(-F) as gaopengcuhk/Tip-Adapter: α, β searched on the whole validation split
(ImageNet: the test set, flagged), cache keys from the first 10 augmented views (crop-scale deviations
recorded), AdamW with eps 1e-4 and a cosine schedule stepped per iteration, the last batch kept."""

import math

import pytest
import torch

from vlprompt.clip.backbone import PromptedTextEncoder
from vlprompt.methods import MethodContext, get_method
from vlprompt.training.feature_runs import feature_loop
from vlprompt.training.loop import loop_setup, lr_at, make_optimizer

NAMES = ["red circle", "blue square", "green star"]


def features(n_per_class, views=None, seed=0, dim=64, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(NAMES), dim, generator=torch.Generator().manual_seed(99)) * 2
    y = torch.arange(len(NAMES)).repeat_interleave(n_per_class)
    shape = (len(y), dim) if views is None else (views, len(y), dim)
    return centres[y] + spread * torch.randn(shape, generator=gen), y


def context(backbone, load_split=None, views=12, scale=0.08):
    train, y = features(4, views=views, seed=1)
    val, val_y = features(1, seed=2)  # the few-shot validation subset: one image per class
    return MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=NAMES,
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=0,
        train_features=train,
        train_labels=y,
        val_features=val,
        val_labels=val_y,
        train_crop_scale_min=scale,
        load_split=load_split,
    )


def build(name, ctx, **overrides):
    cls = get_method(name)
    return cls(cls.make_config({"beta_steps": 20, "alpha_steps": 10, **overrides}), ctx)


def test_search_uses_the_whole_validation_split(pocket_random_backbone):
    full = features(30, seed=3, spread=2.0)  # the whole validation split
    asked = []

    def load_split(name):
        asked.append(name)
        return full if name == "val_full" else None

    ctx = context(pocket_random_backbone, load_split)
    tip = build("tip_adapter", ctx)
    tip.fit(ctx)
    assert "val_full" in asked
    info = tip.run_info()
    assert (info["searched_on"], info["search_images"], info["tuned_on_test"]) == ("val", 90, False)
    # the same alpha, beta as a search on a context whose validation set is that split
    same = context(pocket_random_backbone)
    same.val_features, same.val_labels = full
    ref = build("tip_adapter", same)
    ref.search_alpha_beta(same)
    assert (tip.alpha, tip.beta) == (ref.alpha, ref.beta)
    few = build("tip_adapter", context(pocket_random_backbone))  # the few-shot subset would choose otherwise
    few.search_alpha_beta(context(pocket_random_backbone))
    assert (few.alpha, few.beta) != (tip.alpha, tip.beta)


def test_without_the_whole_split_the_few_shot_subset_is_used_and_said(pocket_random_backbone):
    ctx = context(pocket_random_backbone, lambda name: None)
    tip = build("tip_adapter", ctx)
    tip.fit(ctx)
    info = tip.run_info()
    assert info["searched_on"] == "val (few-shot subset)" and info["search_images"] == 3
    assert any("whole validation split" in d for d in info["deviations"])


def test_imagenet_setting_searches_on_the_test_split_and_flags_it(pocket_random_backbone):
    test = features(20, seed=4, spread=2.0)
    ctx = context(pocket_random_backbone, lambda name: test if name == "test" else None)
    tip = build("tip_adapter_f", ctx, search_split="test")
    tip.after_training(ctx)
    info = tip.run_info()
    assert (info["searched_on"], info["tuned_on_test"], info["search_images"]) == ("test", True, 60)
    with pytest.raises(Exception, match="search_split"):
        build("tip_adapter", ctx, search_split="train")


def test_cache_keys_average_the_first_ten_views_and_deviations_are_recorded(pocket_random_backbone):
    ctx = context(pocket_random_backbone, views=12, scale=0.08)
    tip = build("tip_adapter", ctx)
    keys = torch.nn.functional.normalize(ctx.train_features[:10].mean(0), dim=-1)
    torch.testing.assert_close(tip.cache_keys.detach(), keys)
    info = tip.run_info()
    assert info["cache_views"] == 10 and any("(0.08, 1)" in d and "(0.5, 1)" in d for d in info["deviations"])
    fine = build("tip_adapter", context(pocket_random_backbone, views=10, scale=0.5)).run_info()
    assert not [d for d in fine["deviations"] if "view" in d]


def test_tip_adapter_f_optimiser_and_schedule_follow_the_reference():
    cfg = get_method("tip_adapter_f").make_config()
    assert (cfg.optimizer, cfg.lr, cfg.adam_eps, cfg.weight_decay, cfg.epochs, cfg.batch_size) == (
        "adamw",
        1e-3,
        1e-4,
        0.01,
        20,
        256,
    )
    opt = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    assert opt.defaults["eps"] == 1e-4
    steps = 2  # 300 images in batches of 256, the last one smaller
    lrs = [lr_at(cfg, e, s, steps) for e in range(cfg.epochs) for s in range(steps)]
    t_max = cfg.epochs * steps
    assert lrs == pytest.approx([0.5 * 1e-3 * (1 + math.cos(math.pi * t / t_max)) for t in range(t_max)])
    assert lrs[1] < lrs[0]  # the rate changes within an epoch


def test_the_loop_steps_the_schedule_per_iteration_and_keeps_the_last_batch(
    pocket_random_backbone, tmp_path, monkeypatch
):
    import vlprompt.training.loop as train

    ctx = context(pocket_random_backbone)  # 12 training images
    tip = build("tip_adapter_f", ctx, epochs=2, batch_size=5)
    opt, _, steps = loop_setup(tip, tip.config, torch.device("cpu"), 12)
    assert steps == 3  # ceil(12 / 5), as the reference's DataLoader (drop_last False)
    seen = []
    original = train.make_optimizer

    def recording(cfg, params):
        opt = original(cfg, params)
        step = opt.step

        def logged(*args, **kwargs):
            seen.append(opt.param_groups[0]["lr"])
            return step(*args, **kwargs)

        opt.step = logged
        return opt

    monkeypatch.setattr(train, "make_optimizer", recording)
    feature_loop(tip, ctx, tip.config, tmp_path / "ckpt.pt", checkpoint_every=100, progress=False)
    assert seen == pytest.approx([lr_at(tip.config, e, s, 3) for e in range(2) for s in range(3)])
