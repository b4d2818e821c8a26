"""HiCroPL against the reference (``tests/reference/fixtures/hicropl.pt``, written by ``tests/reference/regenerate.py``
from zzeoZheng/HiCroPL's own ``CustomCLIP`` and trainer on the tiny OpenAI-layout CLIP), with the reference's
mapping (written back outside autograd, aliased vision prompts and proxies), and the paper's mapping in autograd."""

from __future__ import annotations

import pytest
import torch

from test_reference_equivalence import backbone, close, context, fixture, inputs, loop_step, trainable  # noqa: F401
from vlprompt.methods import MethodError, get_method
from vlprompt.training.loop import lr_at

GRAD_RTOL = 5e-5


def hicropl(backbone, fix: dict, **overrides):  # noqa: F811
    ctx = context(backbone, fix, descriptions=fix["descriptions"])
    s = fix["settings"]
    cls = get_method("hicropl")
    config = cls.make_config({"depth": s["depth"], "cross_layer": s["cross_layer"], "n_ctx": s["n_ctx"], **overrides})
    method = cls(config, ctx)
    params = trainable(method)
    assert set(params) == set(fix["init"]), sorted(set(params) ^ set(fix["init"]))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(fix["init"][n].float())
    return method


def test_one_step_equals_the_reference(backbone, inputs, tmp_path):  # noqa: F811
    fix = fixture("hicropl")
    method = hicropl(backbone, fix)
    s, config = fix["settings"], method.config
    assert (config.distill_weight, config.adam_eps, config.optimizer) == (s["lambda"], s["adam_eps"], "adam")
    assert method.vision_ctx[0].data_ptr() == method.vision_ctx[-1].data_ptr()  # one storage, as the reference's
    close(method.description_features, fix["description_features"], what="description classifier d_c")
    images, labels = inputs["images"], fix["labels"]
    method.eval()
    with torch.no_grad():
        close(method(images), fix["logits"], what="logits (one mapping)")
        for n, value in fix["mapped"].items():  # the stored prompts, rewritten by that forward
            close(method.get_parameter(n), value, what=f"{n} after one forward")
        text, vision = method.text_prompts(), list(method.vision_ctx)  # the stored prompts, without another mapping
        close(method.mixed_text(text), fix["text_features"], what="text features ŵ")
        x, frozen = method.mixed_image(images, vision)
        close(frozen, fix["frozen_image_features"], what="frozen image features x₀")
        close(x, fix["image_features"], what="image features x̂")
    method.train()
    state = {k: v.clone() for k, v in method.state_dict().items()}
    with torch.no_grad():
        loss, parts = method.loss(images, labels)  # maps once more, as the reference's training forward
    for term in ("ce", "text", "image"):
        close(parts[term], fix["loss"][term], what=f"loss term {term}")
    close(loss, fix["loss"]["total"], what="total loss")
    method.load_state_dict(state)  # back to the state the reference's step started from
    assert lr_at(method.config, 0) == fix["lr"]
    loop_step(method, images, labels, tmp_path)
    for n, p in trainable(method).items():
        if n in fix["grad"]:
            assert p.grad is not None, n
            # measured: within 2.6e-5 of the largest element (forward within 6e-7); λ = 12 and s = 100 amplify fp32
            # rounding in the backward, as for PromptSRC's fixture, which uses the same tolerance
            close(p.grad, fix["grad"][n], GRAD_RTOL, what=f"gradient of {n}")
            close(p, fix["after"][n], what=f"{n} after one Adam step")
        else:  # the mapper, the poolings and the proxies: no gradient, unchanged (the reference's mapper never trains)
            assert p.grad is None, n
            assert torch.equal(p.detach(), fix["init"][n].float()), n


@pytest.mark.parametrize("removed", ["text", "image"])
def test_a_removed_consistency_term_breaks_the_agreement(backbone, inputs, removed):  # noqa: F811
    fix = fixture("hicropl")
    method = hicropl(backbone, fix).train()
    method(inputs["images"])  # the reference's training forward came after one evaluation forward
    with torch.no_grad():
        loss, parts = method.loss(inputs["images"], fix["labels"])
    close(loss, fix["loss"]["total"], what="total loss")
    without = loss - method.config.distill_weight * parts[removed]
    assert abs(without.item() - fix["loss"]["total"]) > 1e-3


def test_the_residual_mixes_and_the_mapping_each_change_the_logits(backbone, inputs):  # noqa: F811
    fix = fixture("hicropl")
    images = inputs["images"]
    with torch.no_grad():
        plain = hicropl(backbone, fix).eval()
        plain.description_features = torch.zeros_like(plain.description_features)
        assert (plain(images) - fix["logits"]).abs().max() > 1e-2  # without d_c
        unmapped = hicropl(backbone, fix).eval()
        unmapped.map_prompts = lambda: (unmapped.text_prompts(), list(unmapped.vision_ctx))
        assert (unmapped(images) - fix["logits"]).abs().max() > 1e-4  # without the write-back


def test_autograd_mapping_trains_the_mappers_and_keeps_the_stored_prompts(backbone, inputs, tmp_path):  # noqa: F811
    fix = fixture("hicropl")
    method = hicropl(backbone, fix, mapping="autograd")
    assert method.vision_ctx[0].data_ptr() != method.vision_ctx[1].data_ptr()
    before = {n: p.detach().clone() for n, p in trainable(method).items()}
    method.eval()
    with torch.no_grad():
        method(inputs["images"])
    assert all(torch.equal(p, before[n]) for n, p in trainable(method).items())  # nothing written back
    method.train()
    loop_step(method, inputs["images"], fix["labels"], tmp_path)
    for n, p in trainable(method).items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n  # the mappers, poolings and proxies train
        assert not torch.equal(p.detach(), before[n]), n


def test_depth_and_cross_layer_are_capped_together_and_bad_ones_refused(backbone):  # noqa: F811
    fix = fixture("hicropl")
    ctx = context(backbone, fix, descriptions=fix["descriptions"])
    cls = get_method("hicropl")
    method = cls(cls.make_config({"n_ctx": 2}), ctx)  # the preset's 12 / 6 on a 3-block tower
    assert (method.depth, method.cross_layer) == (3, 2) and method.run_info()["cross_layer"] == 2
    for bad in ({"depth": 3, "cross_layer": 3}, {"depth": 1, "cross_layer": 1}, {"mapping": "data"}):
        with pytest.raises(MethodError):
            cls(cls.make_config({"n_ctx": 2, **bad}), ctx)


@pytest.mark.parametrize("mapping", ["reference", "autograd"])
def test_a_run_on_the_pocket_world_trains_and_resumes(tmp_path_factory, mapping):
    """Through the image runner, on the pocket CLIP (4 blocks: the preset's depth 12 and cross layer 6 become 4 and 2),
    with the pocket rule's descriptions; a killed run resumes to the same state (the written-back prompts included)."""
    from test_deep_prompts import run_and_resume

    full = run_and_resume(tmp_path_factory, "hicropl", {"epochs": 3, "batch_size": 2, "n_ctx": 4, "mapping": mapping})
    info = full["method_info"]
    assert (info["depth"], info["cross_layer"], info["mapping"]) == (4, 2, mapping)
    assert info["descriptions"]["source"] == "pocket" and full["train"]["steps_per_epoch"] == 2
