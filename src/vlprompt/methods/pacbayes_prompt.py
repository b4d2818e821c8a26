"""Discrete prompt search with a PAC-Bayes generalisation bound (Akinwande, Jiang, Sam & Kolter, "Understanding prompt
engineering may not require rethinking generalization", ICLR 2024, arXiv 2310.03957).

No official code was available here: this is a reading of the paper, and what it leaves open is an assumption
(marked below and in the Config). The hypothesis is a prompt of L discrete tokens θ = (t_1 … t_L) from the text
encoder's vocabulary V (every token but the start and end tokens, |V| = 49406 for CLIP's BPE), written before the
class name as in CoOp's layout: "[SOS] t_1 … t_L {class}. [EOS]". Its classifier is zero-shot CLIP's with that
prompt, w_c = normalize(E_text(θ, class_c)), logits = s · normalize(f(x)) · Wᵀ.

Greedy search on the training set: position by position, the token that maximises training accuracy is appended
(ties broken by the lower cross-entropy, then the lower token id; assumption: the paper's tie rule), trying every
token of V (``candidates=0``) or ``candidates`` tokens drawn at random for each position from a generator seeded by
the run's seed, independently of the data (a cheaper search; the prior and the bound do not change). The training
set is the few-shot images un-augmented (the feature bank's ``plain`` part): the bound needs i.i.d. examples, which
augmented views of one image are not.

Bound (PAC-Bayes with a point-mass posterior on the found prompt θ̂, so KL(Q ‖ P) = ln 1/P(θ̂)), with probability
at least 1 − δ over the n training examples:

    R(θ̂) ≤ R̂(θ̂) + sqrt( (ln 1/P(θ̂) + ln(n/δ)) / (2(n − 1)) )     (McAllester 1999, as Dziugaite & Roy 2017 state it)
    kl(R̂(θ̂) ‖ R(θ̂)) ≤ (ln 1/P(θ̂) + ln(2√n/δ)) / n                (Langford & Seeger 2001, Maurer 2004; tighter)

R the 0-1 error on the training distribution (under base-to-new: the base classes, so the bound is compared with
the base accuracy; few-shot: all classes). Which of these two the paper reports is an assumption (the first,
reported as ``accuracy_bound``; the second as ``accuracy_bound_kl``). The prior: the paper's is a language model
(LLaMA-7B); no package here ships one offline, so the prior is uniform over V at each of the L positions (L fixed
in advance), ln 1/P(θ̂) = L · ln |V| (43.2 nats for L = 4): a looser but valid bound. The run records it
(``method_info.bound``), the experiment's summary.csv carries ``acc_bound`` and the report lists the bound beside
the test accuracy. Caveat: few-shot subsets are class-balanced draws, not i.i.d. draws of the test distribution; the
pocket test sets are balanced too.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
import torch.nn.functional as F

from vlprompt.clip.backbone import PromptedTextEncoder
from vlprompt.clip.prompting import prompt_name
from vlprompt.methods.base import Method, MethodContext, MethodError, normalize, register

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PACBayesPromptConfig:
    n_tokens: int = 4  # L, fixed in advance (assumption: the paper searches prompts of a few tokens)
    candidates: int = 0  # tokens tried per position: 0 = the whole vocabulary; k > 0: k drawn at random per position
    delta: float = 0.05  # the bound holds with probability 1 - delta
    batch_size: int = 2048  # prompts through the text encoder at once (speed only)


def mcallester_bound(error: float, kl: float, n: int, delta: float) -> float:
    """R ≤ R̂ + sqrt((KL + ln(n/δ)) / (2(n − 1))), capped at 1."""
    return min(1.0, error + math.sqrt((kl + math.log(n / delta)) / (2 * (n - 1))))


def kl_inverse_bound(error: float, kl: float, n: int, delta: float) -> float:
    """The largest R with kl(R̂ ‖ R) ≤ (KL + ln(2√n/δ)) / n (bisection on the binary KL divergence)."""
    budget = (kl + math.log(2 * math.sqrt(n) / delta)) / n

    def binary_kl(q: float, p: float) -> float:
        def term(a, b):
            return 0.0 if a == 0 else a * math.log(a / b)

        return term(q, p) + term(1 - q, 1 - p)

    low, high = error, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        if mid >= 1.0 or binary_kl(error, mid) > budget:
            high = mid
        else:
            low = mid
    return high


@register
class PACBayesPrompt(Method):
    name = "pacbayes_prompt"
    family = "discrete prompt"
    paper = "Akinwande et al., Understanding prompt engineering may not require rethinking generalization, ICLR 2024"
    description = "greedy search over discrete prompt tokens on the training set, with its PAC-Bayes bound"
    Config = PACBayesPromptConfig

    prompt_tokens: torch.Tensor  # the selected discrete prompt's token ids
    weights: torch.Tensor  # (C, D) normalised text features of the current classes

    def __init__(self, config: PACBayesPromptConfig, ctx: MethodContext):
        super().__init__(config, ctx)
        if config.n_tokens < 1 or config.candidates < 0:
            raise MethodError("pacbayes_prompt: n_tokens >= 1 and candidates >= 0")
        self.backbone, self.encoder, self.seed = ctx.backbone, PromptedTextEncoder(ctx.backbone.model), ctx.seed
        empty = ctx.backbone.tokenizer([""])[0]  # [SOT, EOT, 0, ...]
        self.sot, self.eot = int(empty[0]), int(empty[1])
        self.vocabulary = int(ctx.backbone.model.token_embedding.weight.shape[0]) - 2  # all but SOT and EOT
        if {self.sot, self.eot} != {self.vocabulary, self.vocabulary + 1}:
            raise MethodError("pacbayes_prompt: expects the start and end tokens last in the vocabulary (CLIP's BPE)")
        self.register_buffer("prompt_tokens", torch.zeros(0, dtype=torch.long))
        self.info: dict = {}
        self.set_classes(ctx.classnames)

    def class_tokens(self, classnames: list[str]) -> list[list[int]]:
        """The token ids of "{class}." for each class, between the start and end tokens."""
        rows = self.backbone.tokenizer([f"{prompt_name(c)}." for c in classnames])
        return [r[1 : int(r.argmax())].tolist() for r in rows]

    def prompt_ids(self, prefixes: torch.Tensor, names: list[list[int]]) -> torch.Tensor:
        """(P·C, context) token ids of P prefixes (P, L) before each of C class names."""
        length = self.encoder.context_length
        out = torch.zeros(len(prefixes) * len(names), length, dtype=torch.long)
        for j, name in enumerate(names):
            row = len(prefixes[0]) + len(name) + 2
            if row > length:
                raise MethodError(
                    f"pacbayes_prompt: {len(prefixes[0])} prompt tokens and the class name "
                    f"{name} do not fit the text encoder's {length} tokens"
                )
            block = out[j :: len(names)]  # rows of class j
            block[:, 0] = self.sot
            block[:, 1 : 1 + prefixes.shape[1]] = prefixes
            block[:, 1 + prefixes.shape[1] : row - 1] = torch.tensor(name)
            block[:, row - 1] = self.eot
        return out

    @torch.no_grad()
    def text_features(self, prefixes: torch.Tensor, names: list[list[int]]) -> torch.Tensor:
        """(P, C, D) normalised text features of P prompts for C classes."""
        ids = self.prompt_ids(prefixes, names)
        device = self.encoder.token_embedding.weight.device
        feats = torch.cat(
            [
                self.encoder.encode(ids[i : i + self.config.batch_size].to(device)).float()
                for i in range(0, len(ids), self.config.batch_size)
            ]
        )
        return normalize(feats).view(len(prefixes), len(names), -1)

    def set_classes(self, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        feats = self.text_features(self.prompt_tokens.cpu().unsqueeze(0), self.class_tokens(classnames))[0]
        self.register_buffer("weights", feats.to(self.prompt_tokens.device), persistent=False)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * normalize(image_features) @ self.weights.T

    def candidate_tokens(self, position: int) -> torch.Tensor:
        if self.config.candidates == 0 or self.config.candidates >= self.vocabulary:
            return torch.arange(self.vocabulary)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + position)  # independent of the data
        return torch.randperm(self.vocabulary, generator=gen)[: self.config.candidates].sort().values

    def fit(self, ctx: MethodContext) -> bool:
        """Greedy search on the un-augmented training images, then the bound."""
        from tqdm import tqdm

        features, labels, note = ctx.plain_training_data()
        if note:
            self.info["training_features"] = note
        x, y = normalize(features).to(ctx.device), labels.to(ctx.device)
        names = self.class_tokens(self.classnames)
        prefix = torch.zeros(0, dtype=torch.long)
        step = max(1, self.config.batch_size // len(names))
        history = []
        for position in range(self.config.n_tokens):
            candidates = self.candidate_tokens(position)
            best = (-1.0, math.inf, -1)  # (accuracy, cross-entropy, token)
            for i in tqdm(
                range(0, len(candidates), step), desc=f"{self.name} token {position + 1}", unit="batch", disable=None
            ):
                tokens = candidates[i : i + step]
                prefixes = torch.cat([prefix.expand(len(tokens), -1), tokens[:, None]], dim=1)  # (P, position + 1)
                w = self.text_features(prefixes, names).to(x.device)  # (P, C, D)
                logits = self.logit_scale * torch.einsum("nd,pcd->pnc", x, w)
                acc = (logits.argmax(-1) == y).float().mean(-1)  # (P,)
                ce = F.cross_entropy(logits.transpose(1, 2), y.expand(len(tokens), -1), reduction="none").mean(-1)
                for a, c, t in zip(acc.tolist(), ce.tolist(), tokens.tolist(), strict=True):
                    if (a, -c, -t) > (best[0], -best[1], -best[2]):
                        best = (a, c, t)
            prefix = torch.cat([prefix, torch.tensor([best[2]])])
            history.append({"token": best[2], "train_accuracy": round(100 * best[0], 4), "train_ce": round(best[1], 6)})
            log.info("position %d: token %d, training accuracy %.2f", position + 1, best[2], 100 * best[0])
        self.prompt_tokens = prefix.to(self.prompt_tokens.device)
        self.set_classes(self.classnames)
        self.info.update(
            search=history,
            prompt=self.backbone.tokenizer.decode(prefix.tolist()),
            candidates=len(self.candidate_tokens(0)),
            bound=self.bound(1 - history[-1]["train_accuracy"] / 100, len(y)),
        )
        return True

    def bound(self, error: float, n: int) -> dict:
        kl = self.config.n_tokens * math.log(self.vocabulary)
        delta = self.config.delta
        return {
            "name": "PAC-Bayes, point-mass posterior (McAllester 1999); kl-inverse form (Langford & Seeger 2001)",
            "prior": f"uniform over the {self.vocabulary} tokens of the vocabulary at each of the "
            f"{self.config.n_tokens} positions (no language-model prior is available offline)",
            "kl": round(kl, 4),
            "n": n,
            "delta": delta,
            "train_accuracy": round(100 * (1 - error), 4),
            "accuracy_bound": round(100 * (1 - mcallester_bound(error, kl, n, delta)), 4),
            "accuracy_bound_kl": round(100 * (1 - kl_inverse_bound(error, kl, n, delta)), 4),
        }

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {"prompt_tokens": self.prompt_tokens.detach().cpu()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        if "prompt_tokens" not in state:
            raise MethodError(f"checkpoint lacks prompt_tokens for method {self.name!r}")
        self.prompt_tokens = state["prompt_tokens"].to(self.prompt_tokens.device)
        self.set_classes(self.classnames)

    def run_info(self) -> dict:
        return self.info
