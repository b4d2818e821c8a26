"""AD-CLIP's prompt tokens and losses (vlprompt.methods.adclip_parts) against the reference's own classes and its
``forward_backward`` (fixture tests/reference/fixtures/adclip_parts.pt, tests/reference/regenerate_adclip_parts.py):
the three projectors with the reference's initial weights, each loss term with its quirks, and one Adam step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlprompt.methods import adclip_parts as ad

FIXTURE = Path(__file__).resolve().parent / "reference" / "fixtures" / "adclip_parts.pt"


@pytest.fixture(scope="module")
def fix():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture
def tokens(fix):
    s = fix["settings"]
    model = ad.PromptTokens(s["layers"], s["width"], s["embed"], n_image_tokens=4)
    model.load_state_dict(fix["init"], strict=True)
    return model


def close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


def test_projectors_equal_the_reference(fix, tokens):
    source = ad.token_statistics(fix["source_tokens"])
    target = ad.token_statistics(fix["target_tokens"])
    out = fix["outputs"]
    with torch.no_grad():
        close(tokens.domain(*source), out["source_domain"], "source domain tokens")
        close(tokens.domain(*target), out["target_domain"], "target domain tokens")
        close(tokens.image(source[0], 4), out["source_image"], "source image tokens")
        close(tokens.image(target[0], 4), out["target_image"], "target image tokens")
        close(tokens.style(*source), out["source_style"], "style-mapping tokens")
        context = tokens(source, target)
    layers = fix["settings"]["layers"]
    assert context["source_context"].shape[1] == 2 * layers + 4
    close(context["target_context"][:, layers : 2 * layers], out["target_domain"], "target domain in the context")
    image = context["source_context"][:, 2 * layers :]
    assert torch.equal(image, image[:, :1].expand_as(image))  # the reference's identical image tokens


def terms_of(fix, tokens):
    g = fix["given"]
    source = ad.token_statistics(fix["source_tokens"])
    return ad.loss_terms(
        g["source_logits"],
        g["labels"],
        g["target_probs"],
        tokens.domain(*source),
        tokens.style(*source),
        g["source_text"],
        g["target_text"],
    )


def test_loss_terms_equal_the_references_forward_backward(fix, tokens):
    terms = terms_of(fix, tokens)
    for name, expected in fix["terms"].items():
        close(terms[name], expected.float(), f"loss term {name}")


def test_one_adam_step_equals_the_reference(fix, tokens):
    opt = torch.optim.Adam(tokens.parameters(), lr=fix["settings"]["lr"])
    terms_of(fix, tokens)["loss"].backward()
    opt.step()
    after = tokens.state_dict()
    for name, expected in fix["after_step"].items():
        close(after[name], expected, f"{name} after one step")


def test_the_quirks_matter(fix, tokens):
    """Each reproduced quirk changes a number the fixture holds: with the plain variant the test would fail."""
    g, expected = fix["given"], fix["terms"]
    plain_entropy = -(g["target_probs"] * torch.log(g["target_probs"] + 1e-8)).sum(1).mean()
    assert not torch.allclose(plain_entropy, expected["entropy"].float(), atol=1e-3)
    class_axis_of_logits = F.kl_div(
        F.log_softmax(g["source_text"], dim=-1), F.softmax(g["target_text"], dim=-1), reduction="batchmean"
    )
    assert not torch.allclose(class_axis_of_logits, expected["kl"].float(), atol=1e-3)
    mu, sigma = ad.token_statistics(fix["source_tokens"])
    pooled_pairs = ad.pairwise_pool(torch.cat([mu, sigma], dim=-1))
    assert not torch.allclose(pooled_pairs, (mu + sigma) / 2, atol=1e-3)  # adjacent pairs, not μ with σ


@pytest.mark.parametrize("dropped", ["ce", "smn", "entropy", "kl"])
def test_a_removed_term_fails_the_total(fix, tokens, dropped):
    terms = terms_of(fix, tokens)
    without = sum(ad.WEIGHTS[k] * v for k, v in terms.items() if k not in ("loss", dropped))
    assert not torch.allclose(without, fix["terms"]["loss"].float(), atol=1e-4)
