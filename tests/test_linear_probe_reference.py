"""The linear probe as CoOp's lpclip (lpclip/linear_probe.py): scikit-learn's
LogisticRegression (lbfgs, max_iter 1000) on un-augmented, un-normalised features, C searched on the
validation set over 1e6 … 1e-6 and then by the reference's binary search."""

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from vlprompt.clip.backbone import PromptedTextEncoder
from vlprompt.methods import MethodContext, MethodError, get_method

NAMES = ["red circle", "blue square", "green star", "pink ring"]
GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


def test_c_search_by_hand():
    """score peaks at log10 C = 2.3: grid peak 1e2, then [1, 3] -> right (1e3), [2, 3] -> left (1e2),
    [2, 2.5] -> right (10^2.5)."""
    from vlprompt.methods.linear_probe import search_c

    calls = []

    def score(c):
        calls.append(c)
        return -abs(math.log10(c) - 2.3)

    assert search_c(score, GRID, 3) == pytest.approx(10**2.5)
    assert calls[:7] == list(GRID)
    assert search_c(score, GRID, 0) == 1e2
    assert search_c(lambda c: 1.0, GRID, 2) == pytest.approx(1e5)  # ties: first grid value, then the left end


def data(seed, n_per_class, dim, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(NAMES), dim, generator=torch.Generator().manual_seed(7))
    y = torch.arange(len(NAMES)).repeat_interleave(n_per_class)
    norms = torch.rand(len(y), 1, generator=gen) * scale + 0.5  # very different norms: normalising would matter
    return (centres[y] + 0.8 * torch.randn(len(y), dim, generator=gen)) * norms, y


def context(backbone, plain=True):
    dim = backbone.embed_dim
    train, y = data(1, 4, dim)
    noise = torch.randn(3, len(y), dim, generator=torch.Generator().manual_seed(5)) * 5  # augmented views: noise
    val, val_y = data(2, 4, dim)
    return MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=NAMES,
        template="a photo of a {}.",
        device=torch.device("cpu"),
        seed=0,
        train_features=noise,
        train_labels=y,
        val_features=val,
        val_labels=val_y,
        load_split=lambda name: (train, y) if plain and name == "train_plain" else None,
    )


def test_probe_is_sklearn_on_plain_unnormalised_features(pocket_random_backbone):
    ctx = context(pocket_random_backbone)
    cls = get_method("linear_probe")
    cfg = cls.make_config()
    assert (cfg.c_grid, cfg.search_steps, cfg.max_iter) == (GRID, 8, 1000)
    lp = cls(cfg, ctx)
    assert lp.fit(ctx)
    info = lp.run_info()
    assert info["features"] == "plain" and "deviations" not in info
    x, y = ctx.load_split("train_plain")
    ref = LogisticRegression(C=info["C"], max_iter=1000).fit(x.numpy(), y.numpy())
    test, _ = data(3, 5, pocket_random_backbone.embed_dim)
    with torch.no_grad():
        ours = lp(test)
    np.testing.assert_allclose(ours.numpy(), ref.decision_function(test.numpy()), rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # linear in the raw feature: no normalisation inside
        torch.testing.assert_close(lp(3 * test) - lp.bias, 3 * (ours - lp.bias), rtol=1e-4, atol=1e-3)


def test_probe_falls_back_to_the_views_and_says_so(pocket_random_backbone):
    ctx = context(pocket_random_backbone, plain=False)
    cls = get_method("linear_probe")
    lp = cls(cls.make_config({"search_steps": 1}), ctx)
    lp.fit(ctx)
    info = lp.run_info()
    assert info["features"].startswith("views (3") and "un-augmented" in info["deviations"][0]
    ctx.val_features = None
    with pytest.raises(MethodError, match="validation"):
        lp.fit(ctx)
