"""The ``adclip`` method against one training step of AD-CLIP's own trainer on the tiny CLIP (fixture
tests/reference/fixtures/adclip.pt, tests/reference/regenerate_adclip.py): the layer statistics the bank stores
against the reference's per-block tokens, the step's outputs (logits, target probabilities, domain and style tokens,
text features of the per-image prompts), each loss term, the gradients and one Adam step, all at 1e-5 relative."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from vlprompt.clip.backbone import PromptedTextEncoder, load_backbone, open_clip
from vlprompt.clip.layer_statistics import block_statistics
from vlprompt.methods import MethodContext, MethodError, get_method
from vlprompt.training.loop import loop_setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
import tiny_clip  # noqa: E402

RTOL = 1e-5
FIXTURE = tiny_clip.FIXTURES / "adclip.pt"


@pytest.fixture(scope="module")
def fix():
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny_clip")
    oc = open_clip()
    if tiny_clip.MODEL_NAME not in oc.list_models():
        config = tmp / f"{tiny_clip.MODEL_NAME}.json"
        config.write_text(json.dumps(tiny_clip.OPEN_CLIP_CONFIG))
        oc.add_model_config(config)
    weights = tmp / "tiny.pt"
    torch.save(tiny_clip.state_dict(), weights)
    return load_backbone(tiny_clip.MODEL_NAME, str(weights), force_quick_gelu=True)


def close(actual, expected, what: str, scale: float | None = None) -> None:
    """|actual − expected| <= 1e-5 · ``scale`` elementwise; ``scale`` by default max|expected| (the convention of
    tests/test_reference_equivalence.py)."""
    actual, expected = torch.as_tensor(actual).detach().float(), torch.as_tensor(expected).float()
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = scale or float(expected.abs().max()) or 1.0
    err = float((actual - expected).abs().max())
    assert err <= RTOL * scale, f"{what}: max |difference| {err:.3g} > {RTOL:g} x {scale:.3g}"


@pytest.fixture(scope="module")
def rows(backbone, fix):
    """(B, D + 2LW) rows of both batches, as the feature bank and the layer-statistics bank give them."""
    out = {}
    with torch.no_grad():
        for key in ("source", "target"):
            images = fix[f"{key}_images"]
            stats = block_statistics(backbone.model, images)  # (B, L, 2, W)
            out[key] = torch.cat([backbone.model.encode_image(images), stats.flatten(1)], dim=1)
            out[f"{key}_statistics"] = stats
    return out


def build(backbone, fix, rows, **overrides):
    ctx = MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=fix["classnames"],
        template="a photo of a {}.",
        device=torch.device("cpu"),
        train_features=rows["source"].unsqueeze(0),
        train_labels=fix["labels"],
        unlabelled=lambda: rows["target"],
    )
    cls = get_method("adclip")
    method = cls(cls.make_config(overrides), ctx)
    params = {n: p for n, p in method.named_parameters() if p.requires_grad}
    assert set(params) == set(fix["init"]), (sorted(params), sorted(fix["init"]))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(fix["init"][n])
    method.target_batch = lambda size: rows["target"]  # the reference's target batch, paired by index
    return method


def test_the_bank_statistics_equal_the_references_per_block_tokens(rows, fix):
    for key in ("source", "target"):
        close(rows[f"{key}_statistics"], fix["statistics"][key].transpose(0, 1), f"{key} statistics")


def test_a_step_equals_the_reference(backbone, fix, rows):
    method = build(backbone, fix, rows)
    out = method.step_outputs(rows["source"], rows["target"])
    for name, expected in fix["outputs"].items():
        close(out[name], expected, name)
    terms = method.loss_terms(out, fix["labels"])
    for name, expected in fix["terms"].items():
        close(terms[name], expected.float(), f"loss term {name}")
    assert method.config.lr == 0.01 and fix["settings"]["lr"] == method.config.warmup_lr  # the first step's lr
    opt, _, _ = loop_setup(method, method.config, torch.device("cpu"), len(fix["labels"]))
    for group in opt.param_groups:
        group["lr"] = method.config.warmup_lr
    loss, _ = method.loss(rows["source"], fix["labels"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    # gradients relative to the largest of them: the bias of the layer that merges the blocks' image tokens gets
    # ~1e-7 of the others' gradient (it shifts every image token alike), which float32 rounding dominates
    scale = max(float(g.abs().max()) for g in fix["grad"].values())
    for n, p in method.named_parameters():
        if p.requires_grad:
            close(p.grad, fix["grad"][n], f"gradient of {n}", scale)
            close(p, fix["after"][n], f"{n} after one step")


@pytest.mark.parametrize(
    ("option", "term"), [("entropy_over_batch", "entropy"), ("kl_over_classes", "kl")], ids=["entropy", "kl"]
)
def test_each_quirk_is_an_option_that_changes_its_term(backbone, fix, rows, option, term):
    method = build(backbone, fix, rows, **{option: False})
    terms = method.loss_terms(method.step_outputs(rows["source"], rows["target"]), fix["labels"])
    assert not torch.allclose(terms[term], fix["terms"][term].float(), rtol=1e-3)


@pytest.mark.parametrize("dropped", ["smn_weight", "entropy_weight", "kl_weight"])
def test_a_removed_term_fails_the_total(backbone, fix, rows, dropped):
    method = build(backbone, fix, rows, **{dropped: 0.0})
    terms = method.loss_terms(method.step_outputs(rows["source"], rows["target"]), fix["labels"])
    assert not torch.allclose(terms["loss"], fix["terms"]["loss"].float(), rtol=1e-5)


def test_test_prompts_use_the_source_mean_and_the_images_own_tokens(backbone, fix, rows):
    """At test time an image's prompts are [d(mean source statistics), d(x), m(x)]: with one source image the
    source mean is that image, so the logits of a source image equal the training step's source logits when
    paired with itself as the target."""
    one = {**rows, "source": rows["source"][:1], "target": rows["source"][:1]}
    method = build(backbone, {**fix, "labels": fix["labels"][:1]}, one)
    with torch.no_grad():
        close(method(one["source"]), method.step_outputs(one["source"], one["source"])["source_logits"], "logits")


def test_rows_without_statistics_are_refused_in_one_line(backbone, fix, rows):
    method = build(backbone, fix, rows)
    with pytest.raises(MethodError, match="run it under protocol domain_adaptation") as err:
        method(rows["source"][:, : backbone.embed_dim])
    assert "\n" not in str(err.value)
