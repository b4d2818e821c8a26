"""TMML (CTP + TFT; no official code): its reduction to CoOp with the image terms zeroed, the class-aware conditioning
under a permutation of the classes, its pieces by hand on a toy, and a short run on the pocket world."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from test_reference_equivalence import backbone, basis, close, context, trainable  # noqa: F401
from vlprompt.methods import get_method
from vlprompt.methods.tmml import class_aware_inputs, text_guided

FIX = {"classnames": ["car_side", "sea_lion", "water_lily", "ant"], "settings": {"dataset": "OxfordPets"}}


def build(backbone, name: str, **overrides):  # noqa: F811
    cls = get_method(name)
    return cls(cls.make_config(overrides), context(backbone, FIX))


def features(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 32, generator=gen), torch.tensor([0, 1, 2, 3, 2, 1][:n])


def test_image_terms_zeroed_is_coop(backbone):  # noqa: F811
    tmml = build(backbone, "tmml", image_weight=0.0, tft_weight=0.0)
    coop = build(backbone, "coop", n_ctx=4, ctx_init="a photo of a")
    with torch.no_grad():
        coop.prompt_learner.ctx.copy_(tmml.prompt_learner.ctx)
    x, y = features()
    # equal up to float32 reassociation (1e-5 relative, as the fixtures): TMML encodes every image's prompts (B x C
    # rows) where CoOp encodes C, and the CPU's matrix-product kernel may block the sums of a different number of
    # rows differently (1e-6 held on one machine and not on another)
    close(tmml(x), coop(x), 1e-5, "logits")
    loss, _ = tmml.loss(x, y)
    expected, _ = coop.loss(x, y)
    close(loss, expected, 1e-5, "loss")
    loss.backward()
    expected.backward()
    close(tmml.prompt_learner.ctx.grad, coop.prompt_learner.ctx.grad, 1e-5, "gradient of the context")
    with torch.no_grad():  # and the image terms do act when they are on
        tmml.tft.weight.copy_(torch.eye(32))
        assert not torch.allclose(build(backbone, "tmml")(x), coop(x), atol=1e-3)


def test_each_class_has_its_own_image_conditioning_and_it_follows_a_permutation(backbone):  # noqa: F811
    tmml = build(backbone, "tmml")
    x, _ = features(3)
    with torch.no_grad():
        tmml.tft.weight.copy_(0.5 * torch.eye(32))
        bias = tmml.context_bias(torch.nn.functional.normalize(x, dim=-1))
        assert bias.shape[:2] == (3, 4) and not torch.allclose(bias[:, 0], bias[:, 1])  # per class, unlike CoCoOp
        logits = tmml(x)
        order = [2, 0, 3, 1]
        tmml.set_classes([FIX["classnames"][i] for i in order])
        close(tmml(x), logits[:, order], 1e-5, "logits of the permuted classes")


def test_class_aware_input_and_text_guided_tuning_by_hand():
    """x̂ = (e0 + e1)/√2, classes (e0, e2): h_0 = normalize(x̂ ⊙ e0) = e0, h_1 = 0 (nothing agrees). TFT with U = I,
    s = 10, α = 1: x̂·ŵ = (1/√2, 0), a = softmax(10/√2, 0), x̂ + a_0 e0 + a_1 e2, normalised."""
    x = (basis(0) + basis(1)) / math.sqrt(2)
    classes = basis(0, 2)
    h = class_aware_inputs(x, classes)
    close(h[0, 0], basis(0)[0], what="h_0")
    assert h[0, 1].abs().max() == 0
    identity = torch.nn.Linear(32, 32, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(32))
    a0 = 1 / (1 + math.exp(-10 / math.sqrt(2)))
    expected = torch.zeros(32)
    expected[0], expected[1], expected[2] = 1 / math.sqrt(2) + a0, 1 / math.sqrt(2), 1 - a0
    close(text_guided(x, classes, identity, 10.0, 1.0)[0], expected / expected.norm(), 1e-6, "x̃")


@pytest.mark.slow
def test_a_run_on_the_pocket_world_trains(tmp_path):
    """The DAG's inputs for one run built by the CLI, then one TMML run: it trains (the loss falls) and is evaluated."""
    from conftest import prepare_run_inputs
    from vlprompt.experiment.config import load_config
    from vlprompt.training import runs

    cfg = yaml.safe_load(open("config/config.yaml"))
    cfg.update(
        experiment="tmml",
        data_root=str(tmp_path / "data"),
        results_root=str(tmp_path / "results"),
        reports_root=str(tmp_path / "reports"),
        datasets=["pocket_noisy"],
        shots=[2],
        seeds=[1],
        methods=["tmml"],
        method_overrides={"tmml": {"epochs": 4, "batch_size": 4, "meta_reduction": 2}},
    )
    cfg["pocket"]["per_class"] = {"train": 3, "val": 2, "test": 1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare_run_inputs(path, "pocket_noisy", shots=2, seed=1)
    metrics = runs.run(load_config(path), "pocket_noisy", "tmml", 2, 1, tmp_path / "run", progress=False)
    history = metrics["train"]["loss_history"]
    print(f"tmml on the pocket world: loss by epoch {history}, metrics keys {sorted(metrics)}")
    assert history[-1] < history[0]
