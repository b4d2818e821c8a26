"""Runs of an image-loop deep-prompt method (VPT-deep) trained together (vlprompt.training.batched_images) equal the
same runs trained alone, each its own, and a killed batched job resumes.

Tolerance: a run's image features and prompt gradients in the shared tower pass differ from its single-run values
only in the order of floating-point sums inside the matrix products and the patch convolution (a batch of 2 x B
images instead of B may take another kernel blocking): about 1e-7 relative per step in float32 (measured: one
step's loss 5e-7 relative, the prompt gradient 7e-7 of its largest entry). Over the test's 54 SGD steps at VPT's
learning rate that stays below 1e-5: losses within rtol 1e-5, each saved tensor within 1e-5 of its largest
magnitude (measured: 2e-6), accuracies (argmaxes) equal. At a much larger learning rate (0.05 with momentum 0.9)
SGD amplifies the same float noise to ~1e-4 over those steps, as it would between two single runs on different
kernels; the test stays at the method's own rate.
"""

import json

import pytest
import torch
import yaml

from vlprompt.clip import deep_prompts
from vlprompt.experiment.config import load_config
from vlprompt.methods import get_method
from vlprompt.training import batched, batched_images, image_runs, runs

METHOD = "vpt_deep"
SEEDS = (1, 2)
RTOL = 1e-5


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The pocket CLIP, pocket_noisy at 2 shots for two seeds, VPT-deep for 3 epochs at its reference learning rate
    without the warm-up (so that every epoch moves the prompts)."""
    from vlprompt.cli import main as cli

    root = tmp_path_factory.mktemp("batched_images")
    cfg = yaml.safe_load(open("config/config.yaml"))
    cfg.update(
        experiment="batched_images",
        data_root=str(root / "data"),
        results_root=str(root / "results"),
        reports_root=str(root / "reports"),
        datasets=["pocket_noisy"],
        shots=[2],
        seeds=list(SEEDS),
        methods=[METHOD],
        method_overrides={METHOD: {"epochs": 3, "batch_size": 4, "warmup_epochs": 0, "lr": 0.0025}},
    )
    cfg["pocket"]["per_class"] = {"train": 3, "val": 2, "test": 1}
    cfg["train"]["checkpoint_every"] = 1
    cfg["features"]["workers"] = 0
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for cmd in (["prepare"], ["classes"], *(["fewshot", "--shots", "2", "--seed", str(s)] for s in SEEDS)):
        assert cli([*cmd, "--config", str(path), "--dataset", "pocket_noisy", "--quiet"]) == 0
    return root, load_config(path)


def read(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    state = torch.load(folder / "model.pt", weights_only=False)["state"]
    return metrics, state


def assert_same(single: tuple, together: tuple, rtol: float = RTOL) -> None:
    """Two runs' (metrics.json, model.pt state) equal up to reassociation: accuracies (every per-class one),
    hyperparameters and steps equal; loss histories and curves within ``rtol``; every saved tensor within ``rtol``
    of its largest magnitude (float noise scales with the computation's magnitude, not with each element's:
    elementwise rtol would fail on prompt entries that pass near zero). Wall times left out."""
    (ma, sa), (mb, sb) = single, together
    for m in (ma, mb):
        m["train"].pop("epoch_seconds")
        for key in ("seconds", "provenance", "artefacts"):
            m.pop(key)
    assert ma["train"].pop("loss_history") == pytest.approx(mb["train"].pop("loss_history"), rel=rtol)
    curves_a, curves_b = ma["train"].pop("curves"), mb["train"].pop("curves")
    assert [row.keys() for row in curves_a] == [row.keys() for row in curves_b]
    for a, b in zip(curves_a, curves_b, strict=True):
        assert a == pytest.approx(b, rel=rtol)
    assert ma == mb
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape
        assert float((sa[k] - sb[k]).abs().max()) <= rtol * float(sb[k].abs().max()), k


def distance(a: dict, b: dict) -> float:
    """The largest relative difference between two saved states."""
    return max(float(((a[k] - b[k]).abs() / b[k].abs().clamp_min(1e-6)).max()) for k in a)


def test_batched_vpt_deep_runs_equal_their_own_single_runs(mini):
    root, cfg = mini
    assert batched.can_batch(get_method(METHOD))
    group = [(2, seed, root / "together" / str(seed)) for seed in SEEDS]
    batched_images.run_group(cfg, "pocket_noisy", METHOD, group)
    alone = {}
    for _, seed, folder in group:
        alone[seed] = root / "alone" / str(seed)
        image_runs.run(cfg, "pocket_noisy", METHOD, 2, seed, alone[seed], progress=False)
        assert_same(read(alone[seed]), read(folder))
    # the lanes are not interchangeable: the two seeds (their data, order, augmentation and initial prompts) end
    # far apart, so a lane that received the other's rows or prompts could not match its own single run
    first, second = (read(alone[s])[1] for s in SEEDS)
    assert distance(first, second) > 1e3 * RTOL
    trained = read(root / "together" / str(SEEDS[0]))[0]["train"]["loss_history"]
    assert len(trained) == 3 and trained[-1] < trained[0]  # it trained


def test_shared_pass_hands_each_lane_its_own_rows(mini):
    """Two lanes of different batch sizes and prompts through the shared pass get what each gets alone."""
    _, cfg = mini
    prepared = [image_runs.prepare(cfg, "pocket_noisy", METHOD, 2, seed, cfg["results_root"]) for seed in SEEDS]
    model, size = prepared[0].ctx.backbone.model, prepared[0].ctx.backbone.image_size
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(b, 3, size, size, generator=gen) for b in (3, 5)]
    lanes = []
    for p, x in zip(prepared, images, strict=True):
        lanes.append(batched.make_lane(p, len(p.rows), p.batches()))
        lanes[-1].pending = (x, p.method.vision_prompts())
    with torch.no_grad():
        batched_images.shared_image_pass(lanes, model)
        for p, lane, x in zip(prepared, lanes, images, strict=True):
            assert lane.pending is None and len(lane.outputs) == 1
            own = deep_prompts.encode_image(model, x, p.method.vision_prompts())
            torch.testing.assert_close(lane.outputs[0], own, rtol=RTOL, atol=1e-6)
        # the prompts make a difference: the second lane's images with the first lane's prompts give other rows
        other = deep_prompts.encode_image(model, images[1], prepared[0].method.vision_prompts())
        assert not torch.allclose(lanes[1].outputs[0], other, rtol=1e-3)


def test_per_row_prompts_must_match_the_batch(mini):
    _, cfg = mini
    p = image_runs.prepare(cfg, "pocket_noisy", METHOD, 2, 1, cfg["results_root"])
    prompts = [q.unsqueeze(0).expand(2, -1, -1) for q in p.method.vision_prompts()]
    x = torch.zeros(3, 3, p.ctx.backbone.image_size, p.ctx.backbone.image_size)
    with pytest.raises(deep_prompts.DeepPromptError, match="per-row prompts for 2 rows"):
        deep_prompts.encode_image(p.ctx.backbone.model, x, prompts)


def test_killed_batched_vpt_deep_job_resumes_to_the_same_result(mini):
    root, cfg = mini
    full = [(2, seed, root / "full" / str(seed)) for seed in SEEDS]
    batched_images.run_group(cfg, "pocket_noisy", METHOD, full)
    killed = [(2, seed, root / "killed" / str(seed)) for seed in SEEDS]
    with pytest.raises(KeyboardInterrupt):
        batched_images.run_group(cfg, "pocket_noisy", METHOD, killed, stop_after=2)
    for _, _, folder in killed:
        assert (folder / "checkpoint.pt").exists() and not (folder / "metrics.json").exists()
    # one run's checkpoint lost: it starts over while the other resumes, in the same lockstep
    (killed[1][2] / "checkpoint.pt").unlink()
    batched_images.run_group(cfg, "pocket_noisy", METHOD, killed)
    for (_, _, a), (_, _, b) in zip(full, killed, strict=True):
        assert not (b / "checkpoint.pt").exists()
        # the restarted run's first epochs ran in a smaller shared batch: equal up to reassociation
        assert_same(read(a), read(b))


def test_run_many_batches_vpt_deep_and_not_its_subclasses(mini, monkeypatch):
    root, cfg = mini
    calls = []
    monkeypatch.setattr(batched_images, "run_group", lambda *a, **k: calls.append(a[2]) or [])
    monkeypatch.setattr(batched, "run_group", lambda *a, **k: calls.append("features") or [])
    monkeypatch.setattr(runs, "run", lambda *a, **k: calls.append("alone"))
    cfg = {**cfg, "results_root": str(root / "many"), "train": {**cfg["train"], "batch_seeds": True}}
    runs.run_many(cfg, "pocket_noisy", METHOD, [(2, s) for s in SEEDS])
    assert calls == [METHOD]
    calls.clear()
    for name in ("ivlp", "maple"):  # VPTDeep subclasses: text prompts, more tower calls; not declared
        assert not batched.can_batch(get_method(name))
        runs.run_many(cfg, "pocket_noisy", name, [(2, s) for s in SEEDS])
    assert calls == ["alone"] * 4
