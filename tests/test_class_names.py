"""Class names with underscores ("car_side", Caltech101's folder names) are written with
spaces in every prompt, as the references do (CoOp trainers/zsclip.py: ``c.replace("_", " ")``)."""

import pytest
import torch

from vlprompt.clip.backbone import PromptedTextEncoder, encode_prompts
from vlprompt.methods import MethodContext, get_method, list_methods

NAMES = ["car_side", "dollar_bill", "Apply_Eye_Makeup"]
SMALL = {
    "prograd": {"n_ctx": 8},
    "cocoop": {"max_prompts_per_pass": 64},
    "mvlpt": {"n_ctx": 4},
    "hicropl": {"n_ctx": 4},
}  # 20-token context


def context(backbone, names, template="a photo of a {}.", dataset=None, descriptions=None):
    gen = torch.Generator().manual_seed(0)
    dim, n = backbone.embed_dim, len(names)
    y = torch.arange(n).repeat(2)
    unlabelled = torch.randn(12, dim, generator=gen)
    return MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=list(names),
        template=template,
        device=torch.device("cpu"),
        seed=0,
        train_features=torch.randn(2, len(y), dim, generator=gen),
        train_labels=y,
        val_features=torch.randn(len(y), dim, generator=gen),
        val_labels=y,
        dataset=dataset,
        descriptions=descriptions,
        unlabelled=lambda: unlabelled,
    )


def differential_files(folder, names):
    """FuDD's files for ``names`` (Caltech101), one sentence pair for the first two classes, in its format."""
    import json

    (folder / "differential").mkdir()
    (folder / "differential" / "Caltech101_class_names.json").write_text(json.dumps(names))
    pairs = {
        "0_1": {
            "classes": [0, 1],
            "prompt_pairs": [{"prompt_pair": ["a photo of a thing, long.", "a photo of a thing, flat."]}],
        }
    }
    (folder / "differential" / "Caltech101_prompt_pairs.json").write_text(json.dumps(pairs))


def test_prompt_name_and_class_prompts():
    from vlprompt.clip.prompting import class_prompts, prompt_name

    assert prompt_name("car_side") == "car side"
    assert class_prompts("a photo of a {}, a type of pet.", ["great_pyrenees"]) == [
        "a photo of a great pyrenees, a type of pet."
    ]


def test_zeroshot_writes_class_names_with_spaces(pocket_random_backbone):
    cls = get_method("zeroshot")
    zs = cls(cls.make_config(), context(pocket_random_backbone, NAMES))
    expected = encode_prompts(
        pocket_random_backbone,
        ["a photo of a car side.", "a photo of a dollar bill.", "a photo of a Apply Eye Makeup."],
    )
    torch.testing.assert_close(zs.weights, expected)


@pytest.mark.parametrize("name", list_methods())
def test_no_method_puts_an_underscore_into_a_prompt(name, pocket_random_backbone, monkeypatch, tmp_path):
    """Every registered method (a new one too), built, evaluated and switched to other classes, tokenizes
    no text with an underscore. Class names are unique per method, so no cached prompt hides a call."""
    backbone = pocket_random_backbone
    seen: list[str] = []
    tokenize = backbone.tokenizer

    def spy(texts, *args, **kwargs):
        seen.extend([texts] if isinstance(texts, str) else list(texts))
        return tokenize(texts, *args, **kwargs)

    monkeypatch.setattr(backbone, "tokenizer", spy)
    cls = get_method(name)
    names, new = [f"{n}_{name}" for n in NAMES], [f"water_lilly_{name}", f"stop_sign_{name}"]
    # Caltech101 (its template is "a photo of a {}."): the methods with per-dataset data files have its entries
    # (descriptions name their class, as CuPL's do: a method that reads only them still writes the class name)
    descriptions = {c: [f"a {c.replace('_', ' ')} seen from the side.", "an object."] for c in names + new}
    differential_files(tmp_path, names + new)  # FuDD's differential descriptions
    (tmp_path / "templates").mkdir()  # ProAPO's template pool, GLOV's published templates: the user's files
    (tmp_path / "templates" / "Caltech101.json").write_text('["a photo of a {}.", "a blurry photo of a {}."]')
    (tmp_path / "glov.json").write_text('{"lov_guidance_templates_clip": {"Caltech101": ["a {} photo."]}}')
    overrides = {**SMALL, "glov_replay": {"prompts_file": str(tmp_path / "glov.json")}}
    monkeypatch.setenv("VLPROMPT_DESCRIPTIONS", str(tmp_path))
    ctx = context(backbone, names, dataset="Caltech101", descriptions=descriptions)
    if cls.reads_teacher:  # PromptKD's teacher: PromptSRC on the same backbone (it tokenizes class names too)
        from vlprompt.methods.promptkd import Teacher

        ctx.teacher = Teacher(get_method("promptsrc")(get_method("promptsrc").make_config(), ctx))
    width = backbone.embed_dim
    if cls.reads_layer_statistics:  # AD-CLIP: each feature row followed by its image's layer statistics
        from vlprompt.clip.layer_statistics import image_blocks

        width += 2 * len(image_blocks(backbone.model)) * int(backbone.model.visual.transformer.width)
        pool = torch.randn(12, width)
        ctx.train_features, ctx.val_features = torch.randn(2, 6, width), torch.randn(6, width)
        ctx.unlabelled = lambda: pool
        overrides["adclip"] = {"n_image_tokens": 1}  # 2 x 4 + 1 context tokens: these long names fit 20 tokens
    method = cls(cls.make_config(overrides.get(name)), ctx)
    method.eval()
    shape = (2, 3, backbone.image_size, backbone.image_size) if cls.inputs == "images" else (2, width)
    with torch.no_grad():
        method(torch.randn(shape))
        if cls.supports_new_classes:
            method.set_classes(new)
            method(torch.randn(shape))
    assert not [t for t in seen if "_" in t]
    if name in ("linear_probe", "prompt_cam"):  # a linear head; class prompts in the image tower
        assert seen == []  # no text at all
    else:
        assert any(f"car side {name.replace('_', ' ')}" in t for t in seen)  # the class names did go in
