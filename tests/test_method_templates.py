"""Each method's hand-crafted templates are part of its preset, from the reference's own
table (data/method_templates.json, with its source): ProGrad's for its teacher and context, KgCoOp's DTD
anchor, VPT's "a photo of a {}." on every dataset, Tip-Adapter's 7 ImageNet templates."""

import torch

from vlprompt.clip.backbone import PromptedTextEncoder, encode_prompts
from vlprompt.data.registry import get_dataset, list_datasets
from vlprompt.methods import MethodContext, get_method


def context(backbone, names, dataset):
    return MethodContext(
        backbone=backbone,
        encoder=PromptedTextEncoder(backbone.model),
        classnames=list(names),
        template=get_dataset(dataset).template,
        device=torch.device("cpu"),
        seed=0,
        dataset=dataset,
    )


def build(name, ctx, **overrides):
    cls = get_method(name)
    return cls(cls.make_config(overrides), ctx)


def test_tables_name_their_source_and_known_datasets():
    from vlprompt.clip.prompting import method_templates, template_tables

    coop_names = {get_dataset(d).coop_name for d in list_datasets("real")}
    for name, table in template_tables().items():
        assert "@" in table["_source"] and ".py" in table["_source"], name  # repository@commit, file
        assert set(table) - {"_source", "*"} <= coop_names, name
    assert method_templates("kgcoop", "pocket_noisy", "a noisy photo of a {}.") == ["a noisy photo of a {}."]
    assert method_templates(None, "DTD", "{} texture.") == ["{} texture."]
    assert method_templates("a {} here.", "DTD", "{} texture.") == ["a {} here."]


def test_kgcoop_anchor_on_dtd_is_its_own_template(pocket_random_backbone):
    m = build("kgcoop", context(pocket_random_backbone, ["banded", "woven"], "DTD"))
    expected = encode_prompts(
        pocket_random_backbone, ["a photo of a banded, a type of texture.", "a photo of a woven, a type of texture."]
    )
    torch.testing.assert_close(m.anchors, expected)


def test_vpt_text_side_is_a_photo_of_a_on_every_dataset(pocket_random_backbone):
    for dataset in ("DTD", "EuroSAT", "ImageNetR"):
        m = build("vpt_deep", context(pocket_random_backbone, ["banded"], dataset), depth_vision=1)
        torch.testing.assert_close(m.fixed_text, encode_prompts(pocket_random_backbone, ["a photo of a banded."]))
    pocket = build("vpt_deep", context(pocket_random_backbone, ["banded"], "pocket_noisy"), depth_vision=1)
    expected = encode_prompts(pocket_random_backbone, ["a noisy photo of a banded."])  # no reference: its own
    torch.testing.assert_close(pocket.fixed_text, expected)
    zero_shot_like = build("vpt_deep", context(pocket_random_backbone, ["banded"], "DTD"), template=None)
    torch.testing.assert_close(zero_shot_like.fixed_text, encode_prompts(pocket_random_backbone, ["banded texture."]))


def test_prograd_teacher_and_context_follow_its_table(pocket_random_backbone):
    """OxfordPets: "a type of pet, a photo of a {}." — 8 words, 9 tokens (the comma); the reference's context is
    n_ctx − 8 zeros and the first 8 tokens, the 9th ("a") stays fixed text before the class name."""
    bb = pocket_random_backbone
    m = build("prograd", context(bb, ["pug"], "OxfordPets"), n_ctx=10)
    torch.testing.assert_close(m.teacher_weights, encode_prompts(bb, ["a type of pet, a photo of a pug."]))
    pl = m.prompt_learner
    words = bb.tokenizer(["a type of pet, a photo of a"])
    with torch.no_grad():
        emb = pl.encoder.embed(words)[0, 1:9]
    assert (pl.ctx[:2] == 0).all()
    torch.testing.assert_close(pl.ctx[2:], emb)
    assert torch.equal(pl.tokens, bb.tokenizer(["X X a type of pet, a photo of a pug."]))
    assert torch.equal(pl.tokens[0, 11:13], bb.tokenizer(["a pug"])[0, 1:3])  # the fixed "a", then the class
    m.set_classes(["beagle"])  # new classes keep the structure
    assert torch.equal(pl.tokens, bb.tokenizer(["X X a type of pet, a photo of a beagle."]))


def test_prograd_on_a_dataset_without_a_table_entry_uses_its_template(pocket_random_backbone):
    bb = pocket_random_backbone
    m = build("prograd", context(bb, ["red circle"], "pocket_noisy"), n_ctx=8)
    torch.testing.assert_close(m.teacher_weights, encode_prompts(bb, ["a noisy photo of a red circle."]))
    assert (m.prompt_learner.ctx[:3] == 0).all() and (m.prompt_learner.ctx[3:].abs().sum(-1) > 0).all()


def test_tip_adapter_uses_the_seven_imagenet_templates(pocket_random_backbone):
    from vlprompt.methods.zeroshot_ensemble import ensemble_weights, template_sets

    bb = pocket_random_backbone
    names = ["tench", "goldfish"]
    seven = template_sets()["ImageNet7"]  # CLIP's notebook's selection, as Tip-Adapter's datasets/imagenet.py
    assert len(seven) == 7
    m = build("tip_adapter", context(bb, names, "ImageNet"))
    torch.testing.assert_close(m.weights, ensemble_weights(bb, names, seven))
    assert not torch.allclose(m.weights, encode_prompts(bb, ["a photo of a tench.", "a photo of a goldfish."]))
    pets = build("tip_adapter", context(bb, ["pug"], "OxfordPets"))
    torch.testing.assert_close(pets.weights, encode_prompts(bb, ["a photo of a pug, a type of pet."]))


def test_transfer_evaluation_uses_the_targets_templates(tmp_path, monkeypatch):
    """Evaluated on another dataset, a model's hand-crafted prompts are the target's (the references build
    the model for the target dataset): zero-shot CLIP trained on pocket_photo, evaluated on pocket_noisy,
    writes "a noisy photo of a ...", not pocket_photo's "a photo of a ..."."""
    import json

    import yaml

    from vlprompt.cli import main as cli
    from vlprompt.experiment import grid
    from vlprompt.experiment.config import validate
    from vlprompt.training import context, runs

    cfg = yaml.safe_load(open("config/pocket_crossdataset.yaml"))
    cfg.update(
        experiment="xd",
        data_root=str(tmp_path / "data"),
        results_root=str(tmp_path / "results"),
        reports_root=str(tmp_path / "reports"),
        targets=["pocket_noisy"],
        shots=[2],
        seeds=[1],
        methods=["zeroshot"],
        method_overrides={},
    )
    cfg["pocket"] = {"per_class": {"train": 2, "val": 2, "test": 1}}
    cfg = validate(cfg)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    for dataset in ("pocket_photo", "pocket_noisy"):
        for cmd in ("prepare", "classes", "extract"):  # zero-shot CLIP needs no few-shot subset
            assert cli([cmd, "--config", str(path), "--dataset", dataset, "--quiet"]) == 0
    run = grid.Run("pocket_photo", "zeroshot", 0, 0).dir(cfg)
    assert (
        cli(
            [
                "train",
                "--config",
                str(path),
                "--dataset",
                "pocket_photo",
                "--method",
                "zeroshot",
                "--shots",
                "0",
                "--seed",
                "0",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    backbone = context.cached_backbone(cfg, torch.device("cpu"))
    seen: list[str] = []
    tokenize = backbone.tokenizer
    monkeypatch.setattr(backbone, "tokenizer", lambda texts, *a, **k: seen.extend(texts) or tokenize(texts, *a, **k))
    backbone.prompt_cache.clear()
    runs.evaluate_transfer(cfg, "pocket_photo", "zeroshot", 0, 0, "pocket_noisy", tmp_path / "noisy.json")
    assert seen and all(t.startswith("a noisy photo of a ") for t in seen)
