"""The prompted text encoder equals open_clip's encode_text; CoOp prompts are assembled as written.

Guards every use of open_clip's text-tower internals (see backbone.py) for the pocket CLIP and the
OpenAI ViT-B/16 layout (QuickGELU, 77 positions, built with random weights: no download).
"""

import pytest
import torch

from vlprompt.clip.backbone import PromptedTextEncoder, load_backbone
from vlprompt.clip.prompting import PromptLearner

CLASSNAMES = ["red circle", "airplane", "golden retriever", "sea or lake", "pink hexagon ring"]


@pytest.fixture(autouse=True, scope="module")
def _leave_the_global_rng_alone():
    """Models built here draw from torch's global generator: restore it, so that other modules'
    randomly initialised fixtures (conftest's session backbone) do not depend on these tests."""
    with torch.random.fork_rng(devices=[]):
        yield


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return load_backbone("ViT-B-16", None, force_quick_gelu=True)


@pytest.fixture(params=["pocket", "vit_b16"])
def backbone(request):
    return request.getfixturevalue("pocket_random_backbone" if request.param == "pocket" else "vit_b16")


def encode_text(b, texts):
    with torch.no_grad():
        return b.model.encode_text(b.tokenizer(texts))


def test_vit_b16_has_the_openai_layout(vit_b16):
    enc = PromptedTextEncoder(vit_b16.model)
    assert (enc.context_length, enc.width, vit_b16.embed_dim) == (77, 512, 512)
    assert type(vit_b16.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_prompted_encoder_equals_encode_text(backbone):
    enc = PromptedTextEncoder(backbone.model)
    texts = [f"a photo of a {c}." for c in CLASSNAMES] + ["x"]
    tokens = backbone.tokenizer(texts)
    ref = encode_text(backbone, texts)
    with torch.no_grad():
        full = enc(enc.embed(tokens), tokens.argmax(-1), trim=False)
        trimmed = enc.encode(tokens)
    torch.testing.assert_close(full, ref, atol=1e-6, rtol=0)  # the same operations: bit for bit here
    torch.testing.assert_close(trimmed, ref, atol=1e-5, rtol=1e-5)


def test_ctx_init_gives_the_hand_crafted_prompt(backbone):
    enc = PromptedTextEncoder(backbone.model)
    learner = PromptLearner(enc, backbone.tokenizer, CLASSNAMES, ctx_init="a photo of a")
    texts = [f"a photo of a {c}." for c in CLASSNAMES]
    assert learner.n_ctx == 4 and list(learner.state_dict(keep_vars=True))[0] == "ctx"
    with torch.no_grad():
        assert torch.equal(learner.prompts(), enc.embed(backbone.tokenizer(texts)))
        feats = learner()
    assert torch.equal(learner.eot, backbone.tokenizer(texts).argmax(-1))
    torch.testing.assert_close(feats, encode_text(backbone, texts), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("position", "csc"), [("front", False), ("middle", False), ("middle", True), ("end", True)])
def test_class_positions_build_the_right_token_sequences(backbone, position, csc):
    enc = PromptedTextEncoder(backbone.model)
    learner = PromptLearner(
        enc,
        backbone.tokenizer,
        CLASSNAMES,
        n_ctx=4,
        ctx_init=None,
        csc=csc,
        position=position,
        generator=torch.Generator().manual_seed(0),
    )
    words = [["a", "photo", "of", "a"], ["an", "image", "with", "the"]]
    with torch.no_grad():  # context := embeddings of real words, so the prompt is a sentence
        ctx = [enc.embed(backbone.tokenizer([" ".join(w)]))[0, 1:5] for w in words]
        if csc:  # class-specific: alternate the two contexts over the classes
            learner.ctx.copy_(torch.stack([ctx[i % 2] for i in range(len(CLASSNAMES))]))
        else:
            learner.ctx.copy_(ctx[0])

    def sentence(i, c):
        w = words[i % 2] if csc else words[0]
        return {
            "end": f"{' '.join(w)} {c}.",
            "front": f"{c} {' '.join(w)}.",
            "middle": f"{' '.join(w[:2])} {c} {' '.join(w[2:])}.",
        }[position]

    texts = [sentence(i, c) for i, c in enumerate(CLASSNAMES)]
    tokens = backbone.tokenizer(texts)
    with torch.no_grad():
        assert torch.equal(learner.prompts(), enc.embed(tokens))
        feats = learner()
    assert torch.equal(learner.eot, tokens.argmax(-1))
    torch.testing.assert_close(feats, encode_text(backbone, texts), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["end", "middle"])
def test_trimmed_equals_full_forward_and_gradients(backbone, position):
    enc = PromptedTextEncoder(backbone.model)
    learner = PromptLearner(
        enc,
        backbone.tokenizer,
        CLASSNAMES,
        n_ctx=4,
        ctx_init=None,
        position=position,
        generator=torch.Generator().manual_seed(1),
    )
    target = torch.randn(len(CLASSNAMES), backbone.embed_dim, generator=torch.Generator().manual_seed(2))
    out, grads = {}, {}
    for trim in (True, False):
        learner.ctx.grad = None
        feats = enc(learner.prompts(), learner.eot, trim=trim)
        (torch.nn.functional.normalize(feats, dim=-1) * target).sum().backward()
        out[trim], grads[trim] = feats.detach(), learner.ctx.grad.clone()
    assert int(learner.eot.max()) + 1 < enc.context_length  # the trimmed path really is shorter
    torch.testing.assert_close(out[True], out[False], atol=1e-5, rtol=1e-5)
    scale = grads[False].abs().max()
    assert scale > 0
    # equal up to float32 summation order (the trimmed path adds up fewer zero attention terms)
    torch.testing.assert_close(grads[True], grads[False], atol=1e-5 * float(scale), rtol=1e-4)


def test_only_the_context_trains_and_is_saved(pocket_random_backbone):
    b = pocket_random_backbone
    learner = PromptLearner(PromptedTextEncoder(b.model), b.tokenizer, CLASSNAMES)
    assert [n for n, p in learner.named_parameters() if p.requires_grad] == ["ctx"]
    assert not any(k.startswith(("token_prefix", "token_suffix", "tokens", "eot")) for k in learner.state_dict())


def test_new_classes_keep_the_context(pocket_random_backbone):
    b = pocket_random_backbone
    learner = PromptLearner(PromptedTextEncoder(b.model), b.tokenizer, CLASSNAMES[:2])
    learner.set_classes(["blue star", "yellow cross", "green ring"])
    with torch.no_grad():
        feats = learner()
    torch.testing.assert_close(
        feats,
        encode_text(b, ["a photo of a blue star.", "a photo of a yellow cross.", "a photo of a green ring."]),
        atol=1e-5,
        rtol=1e-5,
    )


def test_a_prompt_longer_than_the_context_is_an_error(pocket_random_backbone):
    b = pocket_random_backbone  # the pocket CLIP has 20 positions
    with pytest.raises(ValueError, match="needs 2[0-9] tokens but the text encoder holds 20"):
        PromptLearner(PromptedTextEncoder(b.model), b.tokenizer, ["red circle", "a very long class name " * 3])
