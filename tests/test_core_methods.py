import math

import pytest
import torch

from vlprompt.methods import MethodContext, TrainConfig, get_method
from vlprompt.training.loop import lr_at


def context(backbone, names, template="a photo of a {}."):
    from vlprompt.clip.backbone import PromptedTextEncoder

    return MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=names,
        template=template,
        device=torch.device("cpu"),
        seed=0,
    )


NAMES = ["red circle", "blue square", "green star"]


def test_coop_initialised_from_the_template_equals_zero_shot(pocket_random_backbone):
    ctx = context(pocket_random_backbone, NAMES)
    zs = get_method("zeroshot")(get_method("zeroshot").make_config(), ctx)
    coop = get_method("coop")(get_method("coop").make_config({"ctx_init": "a photo of a"}), ctx)
    x = torch.randn(5, pocket_random_backbone.embed_dim)
    torch.testing.assert_close(coop(x), zs(x), atol=1e-4, rtol=1e-4)
    coop.set_classes(["pink ring"])
    zs.set_classes(["pink ring"])
    torch.testing.assert_close(coop(x), zs(x), atol=1e-4, rtol=1e-4)


def test_only_the_context_trains(pocket_random_backbone):
    coop = get_method("coop")(get_method("coop").make_config(), context(pocket_random_backbone, NAMES))
    assert set(coop.trainable_state()) == {"prompt_learner.ctx"}
    assert coop.trainable_state()["prompt_learner.ctx"].shape == (4, 128)


def test_linear_probe_selects_trained_rows_and_refuses_unseen_classes(pocket_random_backbone):
    cls = get_method("linear_probe")
    lp = cls(cls.make_config(), context(pocket_random_backbone, NAMES))
    with torch.no_grad():
        lp.weight.copy_(torch.randn_like(lp.weight))
    x = torch.randn(4, pocket_random_backbone.embed_dim)
    full = lp(x)
    lp.set_classes(["green star", "red circle"])
    torch.testing.assert_close(lp(x), full[:, [2, 0]])
    with pytest.raises(NotImplementedError):
        lp.set_classes(["pink ring"])


def test_linear_probe_fits_separable_features(pocket_random_backbone):
    cls = get_method("linear_probe")
    ctx = context(pocket_random_backbone, NAMES)
    centers = torch.eye(3, pocket_random_backbone.embed_dim) * 5
    y = torch.arange(3).repeat(8)
    ctx.train_features = (centers[y] + 0.1 * torch.randn(24, pocket_random_backbone.embed_dim)).unsqueeze(0)
    ctx.train_labels = y
    ctx.val_features, ctx.val_labels = centers, torch.arange(3)
    lp = cls(cls.make_config(), ctx)
    assert lp.fit(ctx)
    assert (lp(centers).argmax(-1) == torch.arange(3)).all()


def test_schedule_is_constant_warmup_then_cosine():
    cfg = TrainConfig(epochs=10, lr=0.002, warmup_epochs=1, warmup_lr=1e-5)
    assert lr_at(cfg, 0) == 1e-5
    assert lr_at(cfg, 1) == pytest.approx(0.002)
    assert lr_at(cfg, 6) == pytest.approx(0.5 * 0.002 * (1 + math.cos(math.pi * 5 / 10)))
