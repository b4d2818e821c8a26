"""Feature-bank methods trained with the image encoder in the loop (``vlprompt.methods.in_loop``, the
augmentation study of docs/augmentation.md): the same method on encoded images, a fresh augmentation at every
step, a model the feature method loads."""

import pytest
import torch

from test_deep_prompts import bb, ctx, images, mini  # noqa: F401 (fixtures)
from vlprompt.methods import MethodError, get_method
from vlprompt.methods.in_loop import InLoop, in_loop


@pytest.mark.parametrize("name", ["coop", "kgcoop"])
def test_in_loop_is_the_feature_method_on_encoded_images(name, bb, ctx, images):  # noqa: F811 (fixtures)
    feature_cls, loop_cls = get_method(name), get_method(f"{name}_in_loop")
    assert loop_cls.inputs == "images" and feature_cls.inputs == "features"
    assert loop_cls.Config is feature_cls.Config and loop_cls.family == feature_cls.family
    config = feature_cls.make_config({"epochs": 3})
    feature, loop = feature_cls(config, ctx), loop_cls(config, ctx)
    encoded = bb.model.encode_image(images)  # what the feature bank stores (test transform, unnormalised)
    labels = torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(loop(images), feature(encoded), rtol=0, atol=0)
    (loss_loop, parts_loop), (loss_feature, parts_feature) = loop.loss(images, labels), feature.loss(encoded, labels)
    torch.testing.assert_close(loss_loop, loss_feature, rtol=0, atol=0)
    assert parts_loop == parts_feature
    loss_loop.backward()
    trained = [n for n, p in loop.named_parameters() if p.grad is not None]
    assert trained == ["inner.prompt_learner.ctx"]  # the frozen image encoder is outside the module
    assert all(p.grad is None for p in bb.model.parameters())
    state = loop.trainable_state()
    assert state.keys() == feature.trainable_state().keys()  # the feature method's own keys
    with torch.no_grad():
        loop.inner.prompt_learner.ctx.add_(0.5)
    feature.load_trainable_state(loop.trainable_state())
    torch.testing.assert_close(loop(images), feature(encoded), rtol=0, atol=0)
    loop.set_classes(["purple moon"])
    assert loop(images).shape == (5, 1)


@pytest.mark.parametrize("name", ["linear_probe", "tip_adapter_f", "prograd", "zeroshot", "vpt_deep"])
def test_only_methods_of_the_shared_feature_loop_can_be_wrapped(name):
    with pytest.raises(MethodError, match=f"'{name}' cannot train with the image encoder in the loop"):
        in_loop(get_method(name))


def test_in_loop_run_sees_a_fresh_augmentation_every_step(mini, monkeypatch):  # noqa: F811 (a fixture)
    """Through the shared run (dispatched to the image loop): every training image arrives differently augmented
    in every epoch, and the saved model, loaded by the feature method, scores the run's test metrics."""
    from vlprompt.clip.backbone import PromptedTextEncoder
    from vlprompt.clip.features import ImageList
    from vlprompt.data import registry, splits
    from vlprompt.experiment import grid
    from vlprompt.io import read_json
    from vlprompt.methods import MethodContext
    from vlprompt.training import context, runs
    from vlprompt.training.evaluate import evaluate

    cfg, root = mini
    cfg = {**cfg, "method_overrides": {"kgcoop_in_loop": {"epochs": 3, "batch_size": 2}}}
    seen = []
    encode = InLoop.encode

    def spy(self, x):
        if self.training:
            seen.append(x.clone())
        return encode(self, x)

    monkeypatch.setattr(InLoop, "encode", spy)
    out = root / "runs" / "kgcoop_in_loop"
    metrics = runs.run(cfg, "pocket_dark", "kgcoop_in_loop", 2, 1, out, progress=False)
    assert metrics["train"]["steps_per_epoch"] == 2 and len(metrics["train"]["loss_history"]) == 3
    assert metrics["method_info"]["augmentation"].startswith("fresh")
    batches = torch.cat(seen)  # 3 epochs x 4 base-class images (2 classes x 2 shots)
    assert batches.shape[0] == 12 and len({tuple(x.flatten()[:64].tolist()) for x in batches}) == 12
    # the saved model is KgCoOp's: evaluated by KgCoOp on the encoded test images it gives the run's metrics
    model = torch.load(out / "model.pt", weights_only=False)
    assert set(model["state"]) == {"prompt_learner.ctx"}
    backbone = context.cached_backbone(cfg, torch.device("cpu"))  # the run's (random) backbone
    classes = read_json(grid.classes_path(cfg, "pocket_dark"))
    names = [classes["classnames"][i] for i in classes["base"]]
    kg = get_method("kgcoop")
    feature = kg(
        kg.make_config(model["hyperparameters"]),
        MethodContext(
            backbone=backbone,
            encoder=PromptedTextEncoder(backbone.model),
            classnames=names,
            template=registry.get_dataset("pocket_dark").template,
            device=torch.device("cpu"),
            seed=1,
            dataset="pocket_dark",
        ),
    )
    feature.load_trainable_state(model["state"])
    rows = splits.read_split(registry.split_path(cfg, "pocket_dark"))["test"]
    test_images = ImageList(registry.dataset_dir(cfg, "pocket_dark"), [r[0] for r in rows], backbone.preprocess)
    with torch.no_grad():
        encoded = backbone.model.encode_image(torch.stack([test_images[i] for i in range(len(rows))]))
    ours = evaluate(feature.eval(), rows, encoded, classes, "base2new", names, torch.device("cpu"))
    assert (ours["base_acc"], ours["new_acc"]) == (metrics["base_acc"], metrics["new_acc"])
