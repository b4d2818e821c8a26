"""Linear probe: multinomial logistic regression on frozen CLIP image features.

As in CLIP and CoOp's linear-probe baseline: minimise
    (1/N) Σ_i CE(W·x̂_i + b, y_i) + λ ||W||²,   x̂ = normalize(f(x)),
with L-BFGS, and choose λ on the few-shot validation set from a log-spaced grid (CoOp searches
the inverse regularisation C of scikit-learn's LogisticRegression the same way). Cannot classify
classes unseen in training: new-class accuracy is not defined for it.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vlprompt.methods.base import Method, MethodContext, normalize, register


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
    l2_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    max_iter: int = 100
    use_all_views: bool = True  # train on every cached augmented view, not only the first


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_cls: int, l2: float, max_iter: int):
    """L-BFGS on the L2-regularised multinomial logistic loss; returns (W, b)."""
    w = torch.zeros(n_cls, x.shape[1], requires_grad=True)
    b = torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


@register
class LinearProbe(Method):
    name = "linear_probe"
    family = "linear probe"
    paper = "Radford et al., ICML 2021 (linear-probe CLIP); CoOp's baseline (Zhou et al., IJCV 2022)"
    description = "logistic regression on frozen image features, L2 strength chosen on validation"
    Config = LinearProbeConfig
    supports_new_classes = False

    def __init__(self, config: LinearProbeConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        n_cls, dim = len(ctx.classnames), ctx.backbone.embed_dim
        self.weight = torch.nn.Parameter(torch.zeros(n_cls, dim))
        self.bias = torch.nn.Parameter(torch.zeros(n_cls))
        self.l2 = float("nan")
        self.trained_classes = list(ctx.classnames)
        self.active: list[int] | None = None  # rows of the current classes (None: all trained classes)

    def set_classes(self, classnames: list[str]) -> None:
        """A subset of the trained classes (e.g. ImageNet-A's 200 of ImageNet's 1000) selects their rows;
        a class the probe was not trained on cannot be classified."""
        unknown = [c for c in classnames if c not in self.trained_classes]
        if unknown:
            raise NotImplementedError(f"linear probe was not trained on {unknown[:3]}...")
        self.active = [self.trained_classes.index(c) for c in classnames]

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        logits = normalize(image_features) @ self.weight.T + self.bias
        return logits if self.active is None else logits[:, self.active]

    def fit(self, ctx: MethodContext) -> bool:
        feats = ctx.train_features if self.config.use_all_views else ctx.train_features[:1]
        views = feats.shape[0]
        x = normalize(feats.reshape(-1, feats.shape[-1]))
        y = ctx.train_labels.repeat(views)
        n_cls = len(ctx.classnames)
        best = None
        for l2 in self.config.l2_grid:
            w, b = fit_logistic(x, y, n_cls, l2, self.config.max_iter)
            if ctx.val_features is None or len(self.config.l2_grid) == 1:
                best = (0.0, l2, w, b)
                break
            acc = ((normalize(ctx.val_features) @ w.T + b).argmax(-1) == ctx.val_labels).float().mean().item()
            if best is None or acc > best[0]:
                best = (acc, l2, w, b)
        _, self.l2, w, b = best
        with torch.no_grad():
            self.weight.copy_(w)
            self.bias.copy_(b)
        return True
