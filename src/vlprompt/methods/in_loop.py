"""A feature-bank method trained with the frozen image encoder in the loop: a fresh augmentation at every step.

Feature-bank methods (CoOp, KgCoOp, ...) train on ``features.train_views`` augmented views of each few-shot
image, encoded once; the references (KaiyangZhou/CoOp ``trainers/coop.py``, htyao89/KgCoOp
``trainers/kgcoop.py``, read, not copied) instead run every training batch through the frozen image encoder
with a new random resized crop and flip each time. ``in_loop(cls)`` turns a feature method into the latter:

    logits(x) = m(f(aug(x))),   L = L_m(f(aug(x)), y)

with ``m`` the feature method (unchanged: same Config, preset, loss and learned parameters) and ``f`` the
frozen image encoder, under no gradient (the learned parameters are all on the text side). It trains in
:func:`vlprompt.training.image_runs.image_loop` (the augmentation of each image in epoch e drawn from (seed, e),
CoOp's random resized crop at ``features.crop_scale_min`` and flip) and is evaluated on the test images
through the backbone's test transform. Its ``model.pt`` holds the feature method's own parameters, so the
feature method can load it. Used by ``docs/augmentation.md`` to measure what fixed views
cost against fresh augmentation.

Only methods that train in the shared SGD loop on the training features alone can be wrapped: a method with a
closed-form ``fit``, an ``after_training`` step or ProGrad's gradient surgery reads the feature bank or hooks
into the feature loop, which the image loop does not offer.
"""

from __future__ import annotations

import torch

from vlprompt.methods.base import Method, MethodContext, MethodError, register
from vlprompt.methods.coop import CoOp
from vlprompt.methods.kgcoop import KgCoOp
from vlprompt.methods.vpt_deep import Frozen


class InLoop(Method):
    """``method`` (a feature-bank method) fed by the frozen image encoder; set by :func:`in_loop`."""

    inputs = "images"
    method: type[Method]

    def __init__(self, config, ctx: MethodContext):
        super().__init__(config, ctx)
        self.frozen = Frozen(ctx)
        self.inner = self.method(config, ctx)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, D) features of the frozen image encoder (unnormalised, as the bank)."""
        with torch.no_grad():
            return self.frozen.model.encode_image(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(self.encode(images))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.inner.loss(self.encode(images), labels)

    def set_classes(self, classnames: list[str]) -> None:
        self.inner.set_classes(classnames)

    def run_info(self) -> dict:
        return {**self.inner.run_info(), "augmentation": "fresh at every step (image encoder in the loop)"}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.inner.trainable_state()  # the feature method's own keys: it can load this model

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_trainable_state(state)


def in_loop(method: type[Method]) -> type[Method]:
    """``method`` trained with the image encoder in the loop, registered as ``<name>_in_loop``."""
    hooks = [h for h in ("fit", "after_training") if getattr(method, h) is not getattr(Method, h)]
    hooks += ["adjust_gradients"] if hasattr(method, "adjust_gradients") else []
    if method.inputs != "features" or not method.needs_training or hooks:
        raise MethodError(
            f"{method.name!r} cannot train with the image encoder in the loop: only feature-bank "
            f"methods trained by the shared SGD loop alone can (it has {hooks or method.inputs})"
        )
    return register(
        type(
            f"{method.__name__}InLoop",
            (InLoop,),
            {
                "name": f"{method.name}_in_loop",
                "method": method,
                "Config": method.Config,
                "family": method.family,
                "supports_new_classes": method.supports_new_classes,
                "paper": method.paper,
                "__doc__": f"{method.__name__} with the image encoder in the loop (fresh augmentation).",
                "description": f"{method.name} trained with the frozen image encoder in the loop: a fresh "
                "augmentation of "
                "every image at every step, as the reference trains (no feature bank)",
            },
        )
    )


CoOpInLoop = in_loop(CoOp)
KgCoOpInLoop = in_loop(KgCoOp)
