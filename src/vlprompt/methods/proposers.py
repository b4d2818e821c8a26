"""Proposers: what writes new candidate prompts for a search method that puts a language model in its loop (IPO,
LLM-BBO), behind one interface, ``propose(request) -> responses``.

A search method builds its meta-prompt from its own scored history (the reference's string, see each method), puts
it in a :class:`Request` and parses the raw responses it gets back as it parses a language model's answer. Three
proposers answer:

- :class:`TraceReplayer` replays a recorded trace: JSONL records, one per step, of the step, the meta-prompt text and
  its SHA-256, the model, the sampling settings and the model's responses. It looks each request up by the hash of
  the meta-prompt that the workbench rebuilt from its own scores. A miss means the scores (or the code that writes
  the meta-prompt) differ from the recorded run's, so the replay would no longer be the same run: it stops with one
  line naming the step and both hashes (:class:`TraceMiss`).
- :class:`RuleProposer` stands in for the language model where none is available (the pocket world): seeded edit and
  evolution operators (add, remove and replace a word, mutation, crossover; ProAPO's operators at the word level)
  over a given vocabulary, applied to the best scored candidates of the history. It is **not a language model**:
  what its runs show is what the search loop and the scoring do with proposals of this kind, never what a language
  model would propose (docs/language_models.md).
- :class:`LiveProposer` sends the meta-prompt, exactly the string a trace records, to an OpenAI-compatible chat
  endpoint (the optional dependency ``openai``; never called in tests) and appends each step's record to a trace
  that :class:`TraceReplayer` replays elsewhere.

Every run records which proposer answered (``Proposer.record``, in ``metrics.json``'s ``method_info.proposer``), and
the report says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from vlprompt.methods.base import MethodError

PROPOSERS = ("rule", "trace", "live")
TRACE_FIELDS = ("step", "meta_prompt", "meta_prompt_sha256", "model", "sampling", "responses")


class TraceMiss(MethodError):
    """A replayed run asked for a meta-prompt that its trace does not hold; the message is one line."""


def text_hash(text: str) -> str:
    """The SHA-256 of a meta-prompt's UTF-8 bytes (what a trace keys each step by)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class Request:
    """One call of the proposer: the meta-prompt of ``step`` and the number of responses the method wants.

    ``history`` (candidate, score) and ``form`` (how a candidate is written in a response, e.g. "<INS>{}</INS>") and
    ``slot`` (the class name's place in a candidate) serve the rule proposer only: a language model, live or
    replayed, sees nothing but ``meta_prompt``."""

    step: int
    meta_prompt: str
    n: int
    history: tuple[tuple[str, float], ...] = ()
    form: str = "{}"
    slot: str = "{}"
    system: str = ""  # a system message sent before the meta-prompt (GLOV's); recorded in the trace when set


class Proposer:
    kind = ""

    def propose(self, request: Request) -> list[str]:
        raise NotImplementedError

    def record(self) -> dict:
        """What a run records about its proposer (``method_info.proposer``)."""
        return {"kind": self.kind}


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The language model and its sampling settings, recorded with every step of a trace."""

    model: str = "gpt-3.5-turbo"
    temperature: float = 1.0
    max_tokens: int = 40

    def as_dict(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


def trace_path(folder: str | Path, method: str, dataset: str | None, seed: int) -> Path:
    """Where the trace of one run lives in the user's folder: ``<folder>/<method>/<dataset>/seed<seed>.jsonl``."""
    return Path(folder) / method / str(dataset) / f"seed{seed}.jsonl"


def read_trace(path: Path) -> dict[int, dict]:
    """The records of a trace file by step; a malformed file stops with one line naming it and the fix."""
    if not path.is_file():
        raise MethodError(
            f"no trace at {path}: record one with `proposer: live` where the model can be reached "
            f"(docs/language_models.md), or set `proposer: rule`"
        )
    records: dict[int, dict] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise MethodError(f"{path}, line {number}: not a JSON record (one JSON object per line)") from None
        missing = [f for f in TRACE_FIELDS if f not in rec] if isinstance(rec, dict) else list(TRACE_FIELDS)
        if missing:
            raise MethodError(f"{path}, line {number}: the record lacks {missing} (fields: {list(TRACE_FIELDS)})")
        if text_hash(rec["meta_prompt"]) != rec["meta_prompt_sha256"]:
            raise MethodError(f"{path}, line {number}: meta_prompt_sha256 is not the SHA-256 of its meta_prompt")
        if rec["step"] in records:
            raise MethodError(f"{path}, line {number}: step {rec['step']} recorded twice")
        records[int(rec["step"])] = rec
    return records


class TraceReplayer(Proposer):
    kind = "trace"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records = read_trace(self.path)
        self.replayed = 0

    def propose(self, request: Request) -> list[str]:
        rec = self.records.get(request.step)
        here = text_hash(request.meta_prompt)
        if rec is None or rec["meta_prompt_sha256"] != here:
            recorded = "none (the trace has no such step)" if rec is None else rec["meta_prompt_sha256"][:16]
            raise TraceMiss(
                f"trace replay diverged at step {request.step}: the meta-prompt built here hashes to {here[:16]}, "
                f"the trace {self.path} records {recorded}; the scores differ from the recorded run's, so this "
                f"is no longer the same run"
            )
        if len(rec["responses"]) < request.n:
            raise MethodError(
                f"{self.path}: step {request.step} holds {len(rec['responses'])} responses, {request.n} wanted"
            )
        self.replayed += 1
        return list(rec["responses"][: request.n])

    def record(self) -> dict:
        data = self.path.read_bytes()
        first = self.records[min(self.records)] if self.records else {}
        return {
            "kind": self.kind,
            "about": "a recorded language-model trace, replayed exactly",
            "trace": str(self.path),
            "sha256": hashlib.sha256(data).hexdigest(),
            "model": first.get("model"),
            "sampling": first.get("sampling"),
            "steps_replayed": self.replayed,
        }


class TraceWriter:
    """Appends one record per step to a trace file (what :class:`LiveProposer` writes, and how the test trace was
    made from the rule proposer)."""

    def __init__(self, path: str | Path, sampling: Sampling):
        self.path, self.sampling = Path(path), sampling
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")

    def write(self, request: Request, responses: list[str], model: str | None = None) -> None:
        rec = {
            "step": request.step,
            "meta_prompt": request.meta_prompt,
            "meta_prompt_sha256": text_hash(request.meta_prompt),
            "model": model or self.sampling.model,
            "sampling": self.sampling.as_dict(),
            "responses": list(responses),
        }
        if request.system:
            rec["system"] = request.system
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")


class Recording(Proposer):
    """Any proposer whose every step is also written to a trace (``record_to``)."""

    def __init__(self, inner: Proposer, writer: TraceWriter, model: str | None = None):
        self.inner, self.writer, self.model = inner, writer, model
        self.kind = inner.kind

    def propose(self, request: Request) -> list[str]:
        responses = self.inner.propose(request)
        self.writer.write(request, responses, self.model)
        return responses

    def record(self) -> dict:
        return {**self.inner.record(), "recorded_to": str(self.writer.path)}


#: The rule proposer's default vocabulary on the pocket world: the words of its captions and hand-crafted templates
#: (styles, textures, kinds of picture), never a class name.
def pocket_vocabulary() -> tuple[str, ...]:
    from vlprompt.data.pocket import STYLES, TEXTURES

    words = ["photo", "picture", "image", "drawing", "shape", "object", "small", "large", "centred", "clear"]
    words += [adjective for adjective, _ in STYLES.values() if adjective]
    words += [t for t in TEXTURES if t != "plain"] + ["background"]
    return tuple(dict.fromkeys(words))


class RuleProposer(Proposer):
    """Seeded word-level edit and evolution operators over ``vocabulary`` (not a language model).

    For a request with n responses: the parents are the ``parents`` best candidates of the history (by score,
    then by first appearance); each response applies one operator drawn uniformly from add (a vocabulary word at a
    random position), remove (a word that is neither the class slot nor the last left), replace (a word by a
    vocabulary word), mutation (a fresh candidate "a {word} {word} of a <slot>.") and crossover (the words before
    the slot from one parent, the slot and what follows from another). The class slot is always kept. Draws come
    from ``np.random.RandomState(seed)``, once per proposer, so a run's proposals depend on its seed and its scores.
    """

    kind = "rule"
    OPERATORS = ("add", "remove", "replace", "mutation", "crossover")

    def __init__(self, vocabulary: tuple[str, ...], seed: int, parents: int = 4):
        if not vocabulary:
            raise MethodError("the rule proposer needs a vocabulary of at least one word")
        self.vocabulary, self.seed, self.parents = tuple(vocabulary), seed, parents
        self.rng = np.random.RandomState(seed)

    def word(self) -> str:
        return self.vocabulary[self.rng.randint(len(self.vocabulary))]

    def edit(self, operator: str, parent: str, other: str, slot: str) -> str:
        words = parent.split(" ")
        at = [i for i, w in enumerate(words) if slot in w]
        if operator == "add":
            words.insert(self.rng.randint(len(words) + 1), self.word())
        elif operator in ("remove", "replace"):
            free = [i for i in range(len(words)) if i not in at]
            if free and (operator == "replace" or len(words) > 2):
                i = free[self.rng.randint(len(free))]
                if operator == "remove":
                    del words[i]
                else:
                    words[i] = self.word()
        elif operator == "mutation":
            return f"a {self.word()} {self.word()} of a {slot}."
        elif operator == "crossover":
            head = parent.split(slot)[0]
            tail = other.split(slot, 1)[1] if slot in other else "."
            return f"{head}{slot}{tail}"
        return " ".join(words)

    def propose(self, request: Request) -> list[str]:
        ranked = sorted(enumerate(request.history), key=lambda t: (-t[1][1], t[0]))
        pool = [c for _, (c, _) in ranked if request.slot in c][: self.parents] or [f"a photo of a {request.slot}."]
        out = []
        for _ in range(request.n):
            operator = self.OPERATORS[self.rng.randint(len(self.OPERATORS))]
            parent = pool[self.rng.randint(len(pool))]
            other = pool[self.rng.randint(len(pool))]
            out.append(
                request.form.format(re.sub(r"\s+", " ", self.edit(operator, parent, other, request.slot)).strip())
            )
        return out

    def record(self) -> dict:
        return {
            "kind": self.kind,
            "about": "rule-based stand-in, not a language model: seeded word edits (add, remove, replace, mutation, "
            "crossover) of the best candidates so far over a fixed vocabulary",
            "vocabulary": list(self.vocabulary),
            "seed": self.seed,
        }


class LiveProposer(Proposer):
    """An OpenAI-compatible chat endpoint (optional dependency ``openai``; needs network and a key in the
    environment, ``OPENAI_API_KEY``): ``n`` calls per step, each with the meta-prompt as the one user message, as
    the references call ChatGPT. Never called in tests."""

    kind = "live"

    def __init__(self, sampling: Sampling):
        try:
            import openai  # type: ignore[import-not-found]
        except ImportError:
            raise MethodError(
                "proposer `live` needs the optional package openai (pip install openai) and network; "
                "or replay a recorded trace with `proposer: trace`"
            ) from None
        self.client, self.sampling = openai.OpenAI(), sampling

    def propose(self, request: Request) -> list[str]:
        out = []
        for _ in range(request.n):
            reply = self.client.chat.completions.create(
                model=self.sampling.model,
                messages=[{"role": "system", "content": request.system}] * bool(request.system)
                + [{"role": "user", "content": request.meta_prompt}],
                temperature=self.sampling.temperature,
                max_tokens=self.sampling.max_tokens,
            )
            out.append(reply.choices[0].message.content or "")
        return out

    def record(self) -> dict:
        return {"kind": self.kind, "about": "a language model called live", "model": self.sampling.model}


def build_proposer(
    kind: str, trace_dir: str, method: str, dataset: str | None, seed: int, sampling: Sampling, vocabulary=None
) -> Proposer:
    """The proposer a method's config names: ``rule``, ``trace`` (replays ``<trace_dir>/<method>/<dataset>/
    seed<seed>.jsonl``) or ``live`` (writes that file as it goes)."""
    if kind not in PROPOSERS:
        raise MethodError(f"{method}: unknown proposer {kind!r}; choose one of {list(PROPOSERS)}")
    if kind == "rule":
        return RuleProposer(tuple(vocabulary or pocket_vocabulary()), seed)
    if not trace_dir:
        raise MethodError(f"{method}: proposer {kind!r} needs `trace_dir`, the folder of the traces")
    path = trace_path(trace_dir, method, dataset, seed)
    if kind == "trace":
        return TraceReplayer(path)
    return Recording(LiveProposer(sampling), TraceWriter(path, sampling), sampling.model)
