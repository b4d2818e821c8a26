"""Prompts for the CLIP text tower: class names into text, template tables, and CoOp's prompt learner.

Every class name goes into a prompt through :func:`prompt_name` (underscores become spaces, as every
reference does: "car_side" is written "car side"), by :func:`class_prompts` for hand-crafted prompts and by
:class:`PromptLearner` for learned ones, so no method formats class names itself. A method's hand-crafted
templates are part of its preset: a Config field names a table of ``data/method_templates.json`` (copied
from the reference, with its source) or gives a template, resolved per dataset by :func:`method_templates`.

Learnable prompts (CoOp's prompt learner, written against our encoder):

A prompt for class c is ``[SOS] [ctx_1 .. ctx_M] [class tokens] [.] [EOS]`` (class position
``end``), ``[SOS] [class] [ctx] [.] [EOS]`` (``front``) or with the context split around the class
(``middle``). The context vectors are shared by all classes or one set per class (CSC); frozen
token embeddings are non-persistent buffers, so saving and loading stay strict and small.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.clip.backbone import Backbone, PromptedTextEncoder, encode_prompts

PLACEHOLDER = "X"
METHOD_TEMPLATES_FILE = Path(__file__).resolve().parent.parent / "data" / "method_templates.json"


def prompt_name(classname: str) -> str:
    """A class name as it is written in a prompt: underscores become spaces ("car_side" -> "car side"), as in
    the references (KaiyangZhou/CoOp trainers/zsclip.py and coop.py: ``name.replace("_", " ")``)."""
    return classname.replace("_", " ")


def class_prompts(template: str, classnames: Sequence[str]) -> list[str]:
    """The hand-crafted prompt of every class: ``template`` with the class's :func:`prompt_name`."""
    return [template.format(prompt_name(c)) for c in classnames]


def text_classifier(backbone: Backbone, templates: Sequence[str], classnames: Sequence[str]) -> torch.Tensor:
    """(C, D) L2-normalised hand-crafted classifier: the prompts' features for one template, the normalised
    mean of the normalised features over several (CLIP's prompt ensemble, as Tip-Adapter's ``clip_classifier``)."""
    check_prompts_fit(backbone.tokenizer, [(t.format(prompt_name(c)), c) for c in classnames for t in templates])
    if len(templates) == 1:
        return encode_prompts(backbone, class_prompts(templates[0], classnames))
    feats = encode_prompts(backbone, [t.format(prompt_name(c)) for c in classnames for t in templates])
    return F.normalize(feats.view(len(classnames), len(templates), -1).mean(dim=1), dim=-1)


@lru_cache(maxsize=1)
def template_tables() -> dict[str, dict]:
    """The per-method template tables of ``data/method_templates.json`` (each with its ``_source``)."""
    return json.loads(METHOD_TEMPLATES_FILE.read_text())["tables"]


def method_templates(spec: str | None, dataset: str | None, default: str) -> list[str]:
    """The templates a method uses on ``dataset`` (a registry name), from its Config's template field:

    - ``None`` or ``"coop"``: the dataset's hand-crafted template ``default`` (CoOp's table);
    - a template with ``{}``: that template, on every dataset;
    - a table name of ``data/method_templates.json``: the table's entry for the dataset's CoOp name, or its
      ``"*"`` entry (every real dataset); a pocket dataset or a user's own dataset (``user_datasets``), which no
      reference knows, uses ``default``: its hand-crafted template (a user dataset's ``template``, by default
      "a photo of a {}."). The run's metrics record a user dataset's template (``dataset_provenance``).
    """
    if spec is None or spec == "coop":
        return [default]
    if "{}" in spec:
        return [spec]
    tables = template_tables()
    if spec not in tables:
        raise ValueError(
            f"unknown template table {spec!r}; tables: {sorted(tables)}, 'coop' (the dataset's "
            "hand-crafted template), or a template with '{}'"
        )
    table = tables[spec]
    key = None
    if dataset is not None:
        from vlprompt.data.registry import get_dataset

        key = get_dataset(dataset).coop_name  # None for a pocket or a user dataset
    value = table.get(key, table.get("*", default)) if key else default
    return [value] if isinstance(value, str) else list(value)


class ClassPrompts(Protocol):
    """What a learned prompt offers a CoOp-style method: the current classes, a switch to other classes, and
    the unnormalised text features (n_cls, D) of the current prompts when called (PromptLearner, PatternPrompts)."""

    classnames: list[str]

    def set_classes(self, classnames: list[str]) -> None: ...

    def __call__(self) -> torch.Tensor: ...


class PromptLearner(nn.Module):
    # frozen token buffers, rebuilt by set_classes
    tokens: torch.Tensor  # (n_cls, L) token ids
    token_prefix: torch.Tensor  # (n_cls, 1, width) SOS
    token_suffix: torch.Tensor  # (n_cls, L - 1 - n_ctx, width) class name, ".", EOS
    eot: torch.Tensor  # (n_cls,) end-token positions

    def __init__(
        self,
        encoder: PromptedTextEncoder,
        tokenizer,
        classnames: list[str],
        n_ctx: int = 4,
        ctx_init: str | None = "a photo of a",
        csc: bool = False,
        position: str = "end",
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
        placeholder: str | None = None,
    ):
        """``placeholder``: the text before the class name whose first ``n_ctx`` tokens the context replaces
        (default: ``n_ctx`` "X"); tokens after them stay fixed text (ProGrad's initialisation, see there)."""
        super().__init__()
        if position not in ("end", "front", "middle"):
            raise ValueError(f"class token position must be end, front or middle, got {position!r}")
        if (ctx_init or placeholder) and position != "end":
            raise ValueError("ctx_init and placeholder need class position 'end' (as in CoOp)")
        self.placeholder = placeholder
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.position = position
        self.csc = csc
        width = encoder.width
        device = encoder.token_embedding.weight.device
        if ctx_init:
            words = prompt_name(ctx_init.strip())
            tokens = tokenizer([words]).to(device)
            n_ctx = int(tokens.argmax(-1).item()) - 1  # tokens between SOS and EOS
            with torch.no_grad():
                init = encoder.embed(tokens)[0, 1 : 1 + n_ctx].float()  # (n_ctx, width)
            if csc:
                init = init.unsqueeze(0).repeat(len(classnames), 1, 1)
        else:
            shape = (len(classnames), n_ctx, width) if csc else (n_ctx, width)
            init = torch.randn(shape, generator=generator) * init_std
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.ctx = nn.Parameter(init.to(device))  # (n_ctx, width) or (n_cls, n_ctx, width)
        self.set_classes(classnames)

    def set_classes(self, classnames: list[str]) -> None:
        """Rebuild the frozen token buffers for ``classnames`` (e.g. to evaluate new classes)."""
        if self.csc and hasattr(self, "token_prefix") and len(classnames) != self.ctx.shape[0]:
            raise ValueError("class-specific context cannot be applied to other classes")
        self.classnames = list(classnames)
        names = [prompt_name(n) for n in classnames]
        placeholder = self.placeholder or " ".join([PLACEHOLDER] * self.n_ctx)
        device = self.ctx.device
        if int(self.tokenizer([placeholder]).argmax(-1).item()) - 1 < self.n_ctx:
            raise ValueError(f"placeholder {placeholder!r} has fewer than n_ctx={self.n_ctx} tokens")
        tokens = self.tokenizer([f"{placeholder} {n}." for n in names]).to(device)  # (n_cls, L)
        name_tokens = self.tokenizer(names).to(device)
        self.name_lens = (name_tokens.argmax(-1) - 1).tolist()  # tokens per class name
        length, eot = tokens.shape[1], tokens.argmax(-1)
        for i, n in enumerate(self.name_lens):
            needed = prompt_length(self.tokenizer, f"{placeholder} {names[i]}.") if int(eot[i]) >= length - 1 else 0
            if needed > length:
                raise PromptFitError(too_long(classnames[i], needed, length, n_ctx=self.n_ctx))
            if self.position != "end" and not torch.equal(
                tokens[i, 1 + self.n_ctx : 1 + self.n_ctx + n], name_tokens[i, 1 : 1 + n]
            ):
                raise ValueError(
                    f"class name {classnames[i]!r} tokenizes differently inside the prompt; "
                    f"use class position 'end' or drop its trailing punctuation"
                )
        with torch.no_grad():
            emb = self.encoder.embed(tokens)  # (n_cls, L, width)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)  # SOS (n_cls, 1, w)
        self.register_buffer("token_suffix", emb[:, 1 + self.n_ctx :].clone(), persistent=False)  # class . EOS
        self.register_buffer("eot", tokens.argmax(-1), persistent=False)

    def prompts(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(n_cls, L, width) prompt embeddings; ``ctx`` may carry a leading batch dim (CoCoOp)."""
        ctx = self.ctx if ctx is None else ctx
        n_cls = self.token_prefix.shape[0]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)  # (n_cls, n_ctx, w)
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.position == "end":
            return torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=1)
        out = []
        half = self.n_ctx // 2
        for i, n in enumerate(self.name_lens):
            name, rest = suffix[i : i + 1, :n], suffix[i : i + 1, n:]
            c = ctx[i : i + 1].to(prefix.dtype)
            if self.position == "front":
                out.append(torch.cat([prefix[i : i + 1], name, c, rest], dim=1))
            else:
                out.append(torch.cat([prefix[i : i + 1], c[:, :half], name, c[:, half:], rest], dim=1))
        return torch.cat(out, dim=0)

    def forward(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised text features (n_cls, embed_dim) of the current prompts."""
        return self.encoder(self.prompts(ctx), self.eot)


def format_tokens(tokenizer, text: str) -> int:
    """Number of BPE tokens of ``text`` between SOS and EOS."""
    if not text.strip():
        return 0
    return int(tokenizer([text.strip()])[0].argmax()) - 1


def piece_ids(tokenizer, text: str) -> list[int]:
    """The BPE token ids of ``text`` between SOS and EOS."""
    if not text.strip():
        return []
    row = tokenizer([text.strip()])[0]
    return row[1 : int(row.argmax())].tolist()


def shortened(name: str, limit: int = 60) -> str:
    """A class name for a one-line message: its repr, cut to ``limit`` characters with the total length."""
    return repr(name) if len(name) <= limit else f"{name[:limit]!r}… ({len(name)} characters)"


class PromptFitError(ValueError):
    """A class name whose prompt does not fit the text encoder's context; the message is one line naming the
    class, the tokens needed and available, and the fix."""


def prompt_length(tokenizer, text: str) -> int:
    """Tokens of ``text`` with SOS and EOS, counted before the context cuts it (open_clip's tokenizer truncates
    silently); a tokenizer without ``encode`` (Hugging Face's) counts up to its context."""
    encode = getattr(tokenizer, "encode", None)
    if callable(encode) and hasattr(tokenizer, "sot_token_id"):
        return len(encode(text)) + 2
    return int(tokenizer([text])[0].ne(0).sum())


def context_length(tokenizer) -> int:
    """The text encoder's context in tokens (open_clip's tokenizers carry it; CLIP's is 77)."""
    return int(getattr(tokenizer, "context_length", 77) or 77)


def too_long(
    classname: str, needed: int, available: int, n_ctx: int | None = None, at_least: bool = False, fewer: str = ""
) -> str:
    """The one line for a class name whose prompt does not fit: the class, the tokens needed and available, the
    fix (a shorter name in the dataset's class list, or fewer context tokens where the prompt has them: ``fewer``
    names the setting, else ``n_ctx`` its value)."""
    fix = "give the class a shorter name in the dataset's class list (a user dataset: in its classnames file)"
    if fewer or n_ctx:
        fix += f" or use fewer context tokens ({fewer or f'n_ctx, now {n_ctx}'})"
    return (
        f"the prompt for class {shortened(classname)} needs {'at least ' if at_least else ''}{needed} tokens "
        f"but the text encoder holds {available}; {fix}"
    )


def check_prompts_fit(tokenizer, prompts: Sequence[tuple[str, str]], n_ctx: int | None = None) -> None:
    """Raise :class:`PromptFitError` for the first ``(prompt, class name)`` whose prompt does not fit the context
    (the tokenizer would cut it silently, the class name or the end token with it)."""
    available = context_length(tokenizer)
    # a BPE token holds at least one byte: a prompt of fewer bytes than the context fits without tokenizing it
    for prompt, classname in prompts:
        if len(prompt.encode()) + 2 > available:
            needed = prompt_length(tokenizer, prompt)
            if needed > available:
                raise PromptFitError(too_long(classname, needed, available, n_ctx=n_ctx))


class PatternPrompts(nn.Module):
    """Prompts that mix hard words, learnable slots and the class name anywhere (ATPrompt, MoCoOp, KAPT).

    ``pattern`` is written like a format string: ``{}`` is the class name and ``{name}`` a learnable slot
    of ``slots[name]`` tokens, e.g. ATPrompt's ``"{att0} colour {att1} shape {ctx} {}."`` or a MoCoOp
    expert's ``"{before} {} {after}."``. A slot is initialised from the embedding of ``init[name]`` when
    that is a phrase (its token count must equal the slot's size) or from N(0, std²) when it is a float
    std. The frozen token embeddings are non-persistent buffers; each slot is one ``nn.Parameter``
    (n_tokens, width) shared by all classes. ``forward()`` returns the unnormalised text features (n_cls, D).
    """

    # frozen token buffers, rebuilt by set_classes (and pos_<slot>: (n_cls, n_tokens) each slot's positions)
    tokens: torch.Tensor  # (n_cls, L) token ids
    embedding: torch.Tensor  # (n_cls, L, width)
    eot: torch.Tensor  # (n_cls,) end-token positions

    def __init__(
        self,
        encoder: PromptedTextEncoder,
        tokenizer,
        classnames: list[str],
        pattern: str,
        slots: dict[str, int],
        init: Mapping[str, str | float],
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        import string

        self.encoder, self.tokenizer, self.pattern = encoder, tokenizer, pattern
        pieces = list(string.Formatter().parse(pattern))  # (literal, field, spec, conversion)
        fields = [f for _, f, _, _ in pieces if f is not None]
        if fields.count("") != 1 or set(fields) - {""} != set(slots) or len(set(fields)) != len(fields):
            raise ValueError(
                f"prompt pattern {pattern!r} must hold '{{}}' (the class name) once and each slot of "
                f"{sorted(slots)} once"
            )
        self.pieces = [(lit, f) for lit, f, _, _ in pieces]
        device = encoder.token_embedding.weight.device
        self.slots = nn.ParameterDict()
        for name, n in slots.items():
            value = init[name]
            if isinstance(value, str):
                tokens = tokenizer([prompt_name(value)]).to(device)
                if format_tokens(tokenizer, value) != n:
                    raise ValueError(
                        f"slot {name!r} has {n} tokens but its initial words {value!r} have "
                        f"{format_tokens(tokenizer, value)}"
                    )
                with torch.no_grad():
                    vec = encoder.embed(tokens)[0, 1 : 1 + n].float()
            else:
                vec = torch.randn(n, encoder.width, generator=generator) * float(value)
            self.slots[name] = nn.Parameter(vec.to(device))  # (n, width)
        self.set_classes(classnames)

    def text(self, classname: str) -> str:
        """The prompt's words for a class, slots written as placeholder tokens."""
        out = []
        for lit, field in self.pieces:
            out.append(lit)
            if field == "":
                out.append(prompt_name(classname))
            elif field is not None:
                out.append(" ".join([PLACEHOLDER] * self.slots[field].shape[0]))
        return "".join(out)

    def set_classes(self, classnames: list[str]) -> None:
        """Rebuild the frozen token buffers and the slot positions for ``classnames``."""
        self.classnames = list(classnames)
        device = (
            next(iter(self.slots.values())).device if len(self.slots) else self.encoder.token_embedding.weight.device
        )
        tokens = self.tokenizer([self.text(c) for c in classnames]).to(device)  # (n_cls, L)
        length, eot = tokens.shape[1], tokens.argmax(-1)
        placeholder = int(self.tokenizer([PLACEHOLDER])[0, 1])
        positions: dict[str, list[list[int]]] = {name: [] for name in self.slots}
        for i, c in enumerate(classnames):
            needed = prompt_length(self.tokenizer, self.text(c)) if int(eot[i]) >= length - 1 else 0
            if needed > length:
                n_ctx = sum(int(p.shape[0]) for p in self.slots.values())
                raise PromptFitError(too_long(c, needed, length, n_ctx=n_ctx or None))
            ids: list[int] = []  # the prompt tokenized piece by piece, up to the end of the last slot
            end = 0
            for lit, field in self.pieces:
                ids += piece_ids(self.tokenizer, lit)
                if field == "":
                    ids += piece_ids(self.tokenizer, prompt_name(c))
                elif field is not None:
                    n = self.slots[field].shape[0]
                    positions[field].append(list(range(1 + len(ids), 1 + len(ids) + n)))
                    ids += [placeholder] * n
                    end = len(ids)
            # a slot's positions hold where the whole prompt is tokenized as its pieces up to the last slot (after
            # it, punctuation may merge with the class name: 'say "hi"' + "." ends in the one token '".')
            if tokens[i, 1 : 1 + end].tolist() != ids[:end]:
                raise ValueError(
                    f"prompt pattern {self.pattern!r} tokenizes differently in pieces than whole for "
                    f"class {shortened(c)}; separate slots from words and punctuation by spaces"
                )
        with torch.no_grad():
            emb = self.encoder.embed(tokens)  # (n_cls, L, width)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("embedding", emb, persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        for name in self.slots:
            self.register_buffer(
                f"pos_{name}",
                torch.tensor(positions[name], dtype=torch.long, device=device).view(len(classnames), -1),
                persistent=False,
            )

    def prompts(self, values: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(n_cls, L, width) prompt embeddings; ``values`` replaces slots (e.g. reparameterised ones)."""
        x = self.embedding.clone()
        rows = torch.arange(x.shape[0], device=x.device)[:, None]  # (n_cls, 1)
        for name, p in self.slots.items():
            v = (values or {}).get(name, p)
            x[rows, getattr(self, f"pos_{name}")] = v.to(x.dtype).expand(x.shape[0], -1, -1)
        return x

    def forward(self, values: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.encoder(self.prompts(values), self.eot)
