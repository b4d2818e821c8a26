"""Linear probe: multinomial logistic regression on frozen CLIP image features, CoOp's ``lpclip`` baseline.

Radford et al., ICML 2021 (linear-probe CLIP, appendix A.3), as CoOp's few-shot baseline (Zhou et al., IJCV
2022). Reference implementation followed (read, not copied): KaiyangZhou/CoOp, lpclip/linear_probe.py,
lpclip/linear_probe.sh and lpclip/feat_extractor.py.

Features: the image encoder's output f(x) of the few-shot training images, un-augmented (test transform)
and *not* L2-normalised (``clip_model.visual(x)``). Classifier: scikit-learn's ``LogisticRegression``
(L2 penalty, lbfgs, ``max_iter`` 1000) of inverse regularisation C:

    logits(x) = W · f(x) + b,   (W, b) = argmin  Σ_i CE(W f_i + b, y_i) + ||W||² / (2C)

C is chosen on the few-shot validation set (min(K, 4) images per class, as lpclip's ``val_shot_list``):
first the grid 1e6, 1e4, …, 1e-6 (the first best wins), then ``search_steps`` rounds of the reference's binary
search in log space between C_peak/10 and 10·C_peak: fit both ends, keep the better (the left one on a tie)
and halve the interval towards it. The final classifier is the last round's choice, as in the reference.

Un-augmented training features come from the feature bank's ``train_plain`` split when it holds them
(``MethodContext.load_split``); otherwise the probe is fitted on every cached augmented view of the training
images and the run records that deviation in ``method_info``. Cannot classify classes unseen in training:
new-class accuracy is not defined for it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch

from vlprompt.methods.base import Method, MethodContext, MethodError, register

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
    c_grid: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)  # lpclip's search_list
    search_steps: int = 8  # binary-search rounds after the grid (lpclip/linear_probe.sh --num_step 8)
    max_iter: int = 1000  # lbfgs iterations (the reference's)
    features: str = "plain"  # plain: un-augmented training features (views without them) | views: all views


def search_c(score: Callable[[float], float], grid: tuple[float, ...], steps: int) -> float:
    """The reference's choice of C: the grid's first best, then ``steps`` rounds of binary search in log10
    space between peak/10 and 10·peak, each keeping the better end (the left one on a tie); returns the
    last round's choice (the peak without rounds)."""
    accs = [score(c) for c in grid]
    peak = grid[int(np.argmax(accs))]
    left, right, chosen = math.log10(peak) - 1, math.log10(peak) + 1, peak
    for _ in range(steps):
        middle = (left + right) / 2
        if score(10**left) < score(10**right):
            chosen, left = 10**right, middle
        else:
            chosen, right = 10**left, middle
    return chosen


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    """scikit-learn's L2 logistic regression (lbfgs) of inverse regularisation ``c``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the reference runs with the same cap, silently
        return LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter).fit(x, y)


@register
class LinearProbe(Method):
    name = "linear_probe"
    family = "linear probe"
    paper = "Radford et al., ICML 2021 (linear-probe CLIP); CoOp's baseline (Zhou et al., IJCV 2022)"
    description = "logistic regression (scikit-learn) on un-normalised frozen image features, C chosen on validation"
    Config = LinearProbeConfig
    supports_new_classes = False

    @classmethod
    def name_prompt_tokens(cls, config, count) -> None:
        return None  # a class is a row of the probe: its name enters no prompt

    def __init__(self, config: LinearProbeConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if config.features not in ("plain", "views"):
            raise MethodError(f"linear_probe: features must be 'plain' or 'views', got {config.features!r}")
        n_cls, dim = len(ctx.classnames), ctx.backbone.embed_dim
        self.weight = torch.nn.Parameter(torch.zeros(n_cls, dim))
        self.bias = torch.nn.Parameter(torch.zeros(n_cls))
        self.trained_classes = list(ctx.classnames)
        self.active: list[int] | None = None  # rows of the current classes (None: all trained classes)
        self.info: dict = {}

    def set_classes(self, classnames: list[str]) -> None:
        """A subset of the trained classes (e.g. ImageNet-A's 200 of ImageNet's 1000) selects their rows;
        a class the probe was not trained on cannot be classified."""
        unknown = [c for c in classnames if c not in self.trained_classes]
        if unknown:
            raise NotImplementedError(f"linear probe was not trained on {unknown[:3]}...")
        self.active = [self.trained_classes.index(c) for c in classnames]

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        logits = image_features.float() @ self.weight.T + self.bias  # un-normalised features, as the reference
        return logits if self.active is None else logits[:, self.active]

    def training_set(self, ctx: MethodContext) -> tuple[np.ndarray, np.ndarray]:
        """Un-augmented training features when the bank has them (``features="plain"``), else every view."""
        plain = ctx.split("train_plain") if self.config.features == "plain" else None
        if plain is not None:
            x, y = plain
            self.info["features"] = "plain"
        else:
            features, labels = ctx.training_data()
            x = features.flatten(0, 1)  # (V·N, D)
            y = labels.repeat(features.shape[0])
            self.info["features"] = f"views ({features.shape[0]} augmented views per image)"
            if self.config.features == "plain":
                self.info["deviations"] = [
                    "fitted on augmented views: the feature bank holds no un-augmented training features"
                ]
        return x.float().numpy(), y.numpy()

    def fit(self, ctx: MethodContext) -> bool:
        if ctx.val_features is None or ctx.val_labels is None or len(ctx.val_features) == 0:
            raise MethodError("linear_probe chooses C on validation features; the context has none")
        x, y = self.training_set(ctx)
        xv, yv = ctx.val_features.float().numpy(), ctx.val_labels.numpy()
        fits: dict[float, object] = {}

        def fitted(c: float):
            if c not in fits:
                fits[c] = fit_logistic(x, y, c, self.config.max_iter)
            return fits[c]

        c = search_c(
            lambda c: float((fitted(c).predict(xv) == yv).mean()), self.config.c_grid, self.config.search_steps
        )
        clf = fitted(c)
        rows = torch.as_tensor(clf.classes_, dtype=torch.long)
        coef, intercept = torch.as_tensor(clf.coef_).float(), torch.as_tensor(clf.intercept_).float()
        if coef.shape[0] == 1:  # two classes: sklearn keeps one row, the logit of classes_[1]
            coef, intercept = torch.cat([torch.zeros_like(coef), coef]), torch.cat([torch.zeros(1), intercept])
        with torch.no_grad():
            self.weight.zero_()
            self.bias.fill_(-1e4)  # a class absent from the training set is never predicted
            self.weight[rows] = coef
            self.bias[rows] = intercept
        self.info.update(C=c, val_acc=round(100 * float((clf.predict(xv) == yv).mean()), 4), fits=len(fits))
        log.info("linear_probe: C = %.3g after %d fits", c, len(fits))
        return True

    def run_info(self) -> dict:
        return dict(self.info)
