"""DiffTPT: its view selection (the cosine filter on logits, then the entropy share) and its tuning against the
reference's formulas (chunmeifeng/DiffTPT, difftpt_utils.py), the pocket renderer as an image-variation model, and a
run on a pocket miniature whose generated views are extracted through the CLI as the DAG's job does."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import prepare_run_inputs
from test_methods_wave2 import NAMES, build, context
from vlprompt.cli import main as cli
from vlprompt.data import pocket
from vlprompt.experiment import grid
from vlprompt.experiment.config import load_config
from vlprompt.methods import MethodError, get_method
from vlprompt.methods.difftpt import select_cosine_then_confident
from vlprompt.methods.tpt import average_entropy


def reference_selection(logits: torch.Tensor, cosine: float, entropy: float) -> list[int]:
    """``select_confident_samples_cosine`` for one image, written out from the reference's lines: the view indices
    of the logits it returns (logits (V, C), view 0 the original)."""
    sims = torch.stack([torch.nn.CosineSimilarity(dim=0)(logits[0], logits[i]) for i in range(1, len(logits))])
    idx_cosine = torch.argsort(sims, descending=True)[: int(sims.size()[0] * cosine)] + 1
    kept = torch.cat([torch.zeros(1, dtype=torch.long), idx_cosine])
    chosen = logits[kept]
    ent = -(chosen.softmax(1) * chosen.log_softmax(1)).sum(1)
    idx = torch.argsort(ent, descending=False)[: int(ent.size()[0] * entropy)]
    return kept[idx].tolist()


def reference_avg_entropy(outputs: torch.Tensor) -> torch.Tensor:
    logits = outputs - outputs.logsumexp(dim=-1, keepdim=True)
    avg = logits.logsumexp(dim=0) - math.log(logits.shape[0])
    avg = torch.clamp(avg, min=torch.finfo(avg.dtype).min)
    return -(avg * torch.exp(avg)).sum(dim=-1)


def test_selection_and_entropy_equal_the_reference_formulas():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 128, 6, generator=gen) * 4  # the reference's 65 + 63 views
    keep = select_cosine_then_confident(logits, 0.8, 0.3)
    assert keep.shape == (3, 30)  # int(int(127 · 0.8) + 1) · 0.3) = int(102 · 0.3)
    for b in range(3):
        assert keep[b].tolist() == reference_selection(logits[b], 0.8, 0.3)
        chosen = logits[b, keep[b]]
        assert average_entropy(chosen[None])[0].item() == pytest.approx(reference_avg_entropy(chosen).item(), rel=1e-6)


def test_the_cosine_filter_drops_a_confident_view_of_another_class():
    """Hand-computed: the original leans to class 0; views 1-3 agree with it, view 4 (a wrong-class generation) is
    the most confident of all but points at class 2. The filter (keep ⌊4 · 0.75⌋ = 3 of the 4) removes view 4;
    then the ⌊4 · 0.5⌋ = 2 of lowest entropy among {0, 1, 2, 3} are views 2 and 1. Without the filter, entropy alone
    would pick views 4 and 2."""
    logits = torch.tensor(
        [
            [2.0, 0.0, 0.0],  # 0: the original
            [3.0, 0.0, 0.5],  # 1
            [4.0, 0.0, 0.0],  # 2: the most confident view of the right class
            [1.0, 0.5, 0.0],  # 3
            [0.0, 0.0, 9.0],  # 4: confident, another class
        ]
    )[None]
    assert select_cosine_then_confident(logits, 0.75, 0.5)[0].tolist() == [2, 1]
    assert select_cosine_then_confident(logits, 1.0, 0.4)[0].tolist() == [4, 2]  # no filter: the wrong view wins


def reference_difftpt(model, views, steps=4, lr=5e-3, cosine=0.8, entropy=0.3):
    """One image at a time, as test_time_tuning_difftpt: reset, select at the first step, `steps` AdamW steps on the
    mean entropy of the selected views, predict the original view."""
    out = []
    init = model.prompt_learner.ctx.detach().clone()
    for v in views:  # (V, D)
        ctx = torch.nn.Parameter(init.clone())
        opt = torch.optim.AdamW([ctx], lr)
        x = F.normalize(v, dim=-1)
        selected = None
        for _ in range(steps):
            logits = model.logit_scale * x @ F.normalize(model.prompt_learner(ctx), dim=-1).T
            if selected is None:
                selected = reference_selection(logits.detach(), cosine, entropy)
            loss = reference_avg_entropy(logits[selected])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out.append(model.logit_scale * x[0] @ F.normalize(model.prompt_learner(ctx), dim=-1).T)
    return torch.stack(out)


@pytest.fixture(scope="module")
def trained_ctx():
    from vlprompt.clip.backbone import POCKET_MODEL, load_backbone

    return context(load_backbone(POCKET_MODEL, "pocket"))


def test_difftpt_tunes_each_image_as_the_reference(trained_ctx):
    gen = torch.Generator().manual_seed(3)
    dim = trained_ctx.backbone.embed_dim
    centres = torch.randn(len(NAMES), dim, generator=gen)
    y = torch.arange(len(NAMES)).repeat(2)
    views = centres[y][:, None] + 0.8 * torch.randn(len(y), 10 + 9, dim, generator=gen)
    m = build("difftpt", trained_ctx, views=10, generated_views=9, batch_images=3).eval()
    with torch.no_grad():
        logits = m(views)
    torch.testing.assert_close(logits, reference_difftpt(m, views), atol=1e-4, rtol=1e-4)
    with pytest.raises(MethodError, match="19 views per test image, 20 expected"):
        build("difftpt", trained_ctx, views=10, generated_views=10)(views)
    with pytest.raises(MethodError, match="wrong_class_rate"):
        build("difftpt", trained_ctx, wrong_class_rate=1.5)


def test_the_preset_is_the_reference_script():
    c = get_method("difftpt").make_config({})
    assert (c.views, c.generated_views, c.tta_steps, c.tta_lr) == (65, 63, 4, 5e-3)
    assert (c.selection_cosine, c.selection, c.wrong_class_rate) == (0.8, 0.3, 0.0)
    assert get_method("difftpt").reads_test_views and not get_method("difftpt").needs_training


def test_the_renderer_as_image_variation_model():
    world = pocket.world("v2")
    relpath = "images/test/red_circle/003.png"
    a, drawn = pocket.render_variation(world, "noisy", "red circle", relpath, 1)
    b, _ = pocket.render_variation(world, "noisy", "red circle", relpath, 1)
    c, _ = pocket.render_variation(world, "noisy", "red circle", relpath, 2)
    assert drawn == "red circle" and a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert a.size == (world.image_size, world.image_size)
    near = {f"{col} {sh}" for col, sh in pocket.close_classes(world, "red", "circle")}
    assert near and "red circle" not in near and all(("red" in n) != ("circle" in n) for n in near)
    drawn_all = [pocket.render_variation(world, "noisy", "red circle", relpath, v, 1.0)[1] for v in range(20)]
    assert set(drawn_all) <= near and len(set(drawn_all)) > 1
    wrong = [pocket.render_variation(world, "noisy", "red circle", relpath, v, 0.3)[1] for v in range(200)]
    assert 0.2 < sum(w != "red circle" for w in wrong) / 200 < 0.4


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("difftpt")
    cfg = yaml.safe_load(open("config/pocket_v1.yaml"))
    cfg.update(
        experiment="difftpt",
        data_root=str(root / "data"),
        results_root=str(root / "results"),
        reports_root=str(root / "reports"),
        datasets=["pocket_noisy"],
        shots=[1],
        seeds=[1],
        methods=["difftpt"],
        method_overrides={
            "difftpt": {
                "views": 4,
                "generated_views": 3,
                "wrong_class_rate": 0.5,
                "tta_steps": 1,
                "view_crop_scale_min": 0.5,
            }
        },
    )
    cfg["pocket"]["per_class"] = {"train": 1, "val": 1, "test": 1}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare_run_inputs(path, "pocket_noisy", shots=1, test_bank=True)
    for extra in (["--views", "4", "--crop", "0.5"], ["--part", "generated_views", "--views", "3"]):
        part = extra if extra[0] == "--part" else ["--part", "test_views", *extra]
        rate = ["--wrong-class-rate", "0.5"] if "generated_views" in part else []
        assert cli(["extract", *part, *rate, "--config", str(path), "--dataset", "pocket_noisy", "--quiet"]) == 0
    return root, path, load_config(path)


def test_generated_views_are_a_declared_part_of_the_bank_and_difftpt_reads_them(mini, tmp_path):
    from vlprompt.clip.features import FeatureBank
    from vlprompt.training.context import test_view_features

    root, path, cfg = mini
    stem = grid.generated_views_stem(cfg, "pocket_noisy", "difftpt", 0)
    assert stem is not None and stem.name == "test_generated3_pocketvar-p0.5"
    assert grid.generated_views_stem(cfg, "pocket_noisy", "tpt", 0) is None
    inputs = grid.declared_inputs(cfg, "pocket_noisy", "difftpt", 0, None)
    assert grid.Path(f"{stem}.npy") in inputs and any(p.name == "test_views4_crop0.5.npy" for p in inputs)
    bank = FeatureBank(stem.parent)
    meta = bank.meta(stem.name)
    assert meta["generator"]["name"] == "pocket_variation" and meta["generator"]["wrong_class_rate"] == 0.5
    rows = bank.rows("test")
    both = test_view_features(cfg, "pocket_noisy", "difftpt", 0, rows[:5])
    assert both.shape == (5, 4 + 3, 64)
    torch.testing.assert_close(both[:, 4:], bank.take(stem.name, [r[0] for r in rows[:5]]).transpose(0, 1))
    out = tmp_path / "run"
    args = ["train", "--config", str(path), "--dataset", "pocket_noisy", "--method", "difftpt"]
    assert cli([*args, "--shots", "0", "--seed", "0", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method_info"]["generator"]["kind"] == "pocket_variation"
    assert 0 <= metrics["base_acc"] <= 100


def test_extract_refuses_a_generated_part_without_its_rate(mini):
    root, path, cfg = mini
    with pytest.raises(SystemExit, match="generated_views --views and --wrong-class-rate"):
        cli(["extract", "--part", "generated_views", "--views", "3", "--config", str(path), "--dataset", "pocket_dark"])
