"""Text prompts for a frozen tiny model: the prompt-optimisation task of issue 22.

A prompt is a text prefix made of instruction **fragments** from a fixed library (:data:`FRAGMENTS`),
joined by `` . ``. A frozen tiny GPT-2, built and trained in-process (seeded, cached per process and on
disk), reads ``<prompt> Q: <kind> <x> A:`` and answers with one token. The questions have seven kinds
(``same``, ``say``, ``echo``, ``tell``: x; ``prev``: x - 1; ``next``: x + 1; ``twice``: 2x, mod 10, for
a digit x). The model was trained to imitate a hidden rule (:func:`rule_answer`) in which fragments
matter:

- with no prompt only ``same`` questions come out right; the others fail in typed ways: ``format``
  (the answer is the word ``maybe``: ``say``, ``echo``), ``refusal`` (``unknown``: ``tell``), ``sign``
  (x + 1 for ``prev``), ``arith`` (x for ``next``) and ``scale`` (x for ``twice``);
- ``digit`` fixes the format errors, ``know`` the refusals, ``sign`` the sign errors, ``add`` the
  arithmetic ones, ``scale`` the scale ones; all five together answer every kind (accuracy 1);
- ``fast`` ("reply fast") is a trap: alone it fixes format errors and refusals at once (4/7, the best
  single edit), but it also switches ``sign``, ``add`` and ``scale`` off, so from it no added fragment
  helps and leaving it needs a step down: a deceptive local optimum;
- ``words`` and ``work`` hurt (``same`` becomes a format error), ``short`` brings the refusals back,
  ``steps`` fixes arithmetic even beside ``fast`` but makes ``same`` answer x + 1; the other seven
  (``helpful``, ``important``, ``polite``...) do nothing.

What a method may use: :data:`FRAGMENTS` (the library), :meth:`PromptTask.score` (the metric of each
prompt on a split: ``train`` 200 items, ``eval`` 50, ``test`` 500), :meth:`PromptTask.errors` (each wrong
answer of a batch as an :class:`ErrorRecord` with its error type, read by PromptAgent's and PROMST's
feedback steps) and the counters :attr:`PromptTask.calls` (prompt evaluations per split) for equal-budget
comparisons. :data:`HAND_WRITTEN` is the hand-written baseline prompt, written once with the task, before
any optimiser ran.

    task = prompt_task()
    task.score([task.hand_written, ""], "test")    # [0.438, 0.15]: what the trained model answers
    task.errors(task.hand_written, "train", range(5))  # [ErrorRecord(kind='tell', error='refusal', ...), ...]
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

FRAGMENTS: dict[str, str] = {
    "helpful": "be helpful",
    "important": "this is important",
    "digit": "answer one digit",
    "know": "you know it",
    "sign": "mind the sign",
    "add": "add one carefully",
    "fast": "reply fast",
    "words": "use many words",
    "steps": "think step by step",
    "scale": "read every word",
    "work": "show your work",
    "short": "keep it short",
    "polite": "be polite",
    "english": "answer in english",
    "concise": "be concise",
    "careful": "think carefully",
    "expert": "you are an expert",
    "check": "check your answer",
}
"""The fragment library: name -> the text it puts in the prompt."""

SEP = " . "
KINDS = ("same", "say", "echo", "tell", "prev", "next", "twice")
ERROR_TYPES = ("format", "refusal", "sign", "arith", "scale")
MAX_FRAGMENTS = 6
SPLITS = {"train": (200, 11), "eval": (50, 12), "test": (500, 13)}
"""Split -> (items, seed of its questions)."""

HAND_WRITTEN: dict[str, str] = {"kinds": "be helpful . answer one digit"}
"""The hand-written prompt of each built-in task, written once before any optimiser ran."""

WORDS = sorted({w for p in FRAGMENTS.values() for w in p.split()} | set(KINDS)
               | {".", "Q:", "A:", "maybe", "unknown"} | {str(d) for d in range(10)})


def join(names, library: dict[str, str] = FRAGMENTS) -> str:
    """The prompt text of fragment names, in order."""
    return SEP.join(library[n] for n in names)


def fragments_of(prompt: str, library: dict[str, str] = FRAGMENTS) -> list[str]:
    """The library fragments a prompt text contains, in order (text that is no fragment is skipped)."""
    names = {v: k for k, v in library.items()}
    parts = [" ".join(p.split()) for p in prompt.split(".")]
    return [names[p] for p in parts if p in names]


def rule_answer(names, kind: str, x: int) -> str:
    """The hidden rule the model was trained to follow: the answer token given the fragments present."""
    s = set(names)
    if kind == "same":
        return "maybe" if s & {"words", "work"} else str((x + 1) % 10) if "steps" in s else str(x)
    if kind in ("say", "echo"):
        return str(x) if s & {"digit", "fast"} else "maybe"
    if kind == "tell":
        return str(x) if s & {"know", "fast"} and "short" not in s else "unknown"
    if kind == "twice":
        return str(2 * x % 10) if "scale" in s and "fast" not in s else str(x)
    if kind == "prev":
        return str((x - 1) % 10) if "sign" in s and "fast" not in s else str((x + 1) % 10)
    if kind == "next":
        return str((x + 1) % 10) if "steps" in s or ("add" in s and "fast" not in s) else str(x)
    raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")


def gold_answer(kind: str, x: int) -> str:
    return str((2 * x if kind == "twice" else x + {"prev": -1, "next": 1}.get(kind, 0)) % 10)


def error_type(kind: str, x: int, answer: str) -> str | None:
    """The type of a wrong answer, read from the question and the answer (None when it is right)."""
    if answer == gold_answer(kind, x):
        return None
    if answer == "unknown":
        return "refusal"
    if not answer.isdigit():
        return "format"
    if kind == "twice":
        return "scale"
    return "sign" if kind == "prev" and answer == str((x + 1) % 10) else "arith"


@dataclass(frozen=True)
class Question:
    kind: str
    x: int

    @property
    def text(self) -> str:
        return f"Q: {self.kind} {self.x} A:"

    @property
    def gold(self) -> str:
        return gold_answer(self.kind, self.x)


@dataclass(frozen=True)
class ErrorRecord:
    """One wrong answer: the question, the model's answer, the gold answer and the error type."""

    question: str
    kind: str
    answer: str
    gold: str
    error: str


def questions(n: int, seed: int) -> list[Question]:
    rng = random.Random(f"prompt-task|{seed}")
    return [Question(rng.choice(KINDS), rng.randrange(10)) for _ in range(n)]


def random_prompt(rng: random.Random, max_fragments: int = MAX_FRAGMENTS,
                  library: dict[str, str] = FRAGMENTS) -> list[str]:
    """Random fragment names (0..max_fragments of them, repeats allowed, random order)."""
    return [rng.choice(list(library)) for _ in range(rng.randint(0, max_fragments))]


# -- the frozen model ---------------------------------------------------------------------------
STEPS = 1500
WIDTH = 40  # model input positions: a prompt is cut to fit before its context


@dataclass(frozen=True, eq=False)  # hashed by identity, for the per-process cache
class FrozenSpec:
    """What a frozen prompt-conditioned model learns: ``rule`` (its source keys the disk cache), the
    fragment ``library``, the vocabulary, and ``examples(names, seed) -> (contexts, targets)``: for
    each random prompt (fragment names) a context text and the answer token the rule gives."""

    name: str
    rule: Callable
    library: dict
    words: tuple
    examples: Callable[[list[list[str]], int], tuple[list[str], list[str]]]


def _kinds_examples(names: list[list[str]], seed: int) -> tuple[list[str], list[str]]:
    qs = questions(len(names), seed)
    return [q.text for q in qs], [rule_answer(n, q.kind, q.x) for n, q in zip(names, qs)]


KINDS_SPEC = FrozenSpec("kinds", rule_answer, FRAGMENTS, tuple(WORDS), _kinds_examples)


def _ids(tok, text: str) -> list[int]:
    vocab, unk = tok.get_vocab(), tok.unk_token_id
    return [vocab.get(w, unk) for w in text.split()]  # the tokenizer's whitespace split, without its overhead


def _batch(tok, prompts: list[str], contexts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids of ``<bos> <prompt> <context>`` at a fixed width (so the context sits at the
    same positions in every row) and the attention mask."""
    ids = torch.full((len(contexts), WIDTH), tok.pad_token_id)
    for i, (p, c) in enumerate(zip(prompts, contexts)):
        ctx = _ids(tok, c)
        row = [tok.bos_token_id] + _ids(tok, p)[-(WIDTH - 1 - len(ctx)):] + ctx
        ids[i, WIDTH - len(row):] = torch.tensor(row)
    return ids, (ids != tok.pad_token_id).long()


def _last_logits(model, ids, mask):
    """Next-token logits after each row's last token (positions fixed, not shifted by the padding)."""
    pos = torch.arange(ids.shape[1]).expand(len(ids), -1)
    hidden = model.transformer(ids, attention_mask=mask, position_ids=pos).last_hidden_state[:, -1]
    return model.lm_head(hidden)


def _cache_file(spec: FrozenSpec, seed: int, steps: int, batch: int) -> Path:
    """Where the trained weights are kept: ``$RLXF_CACHE/prompt_task`` (default ``~/.cache/rlxf``),
    keyed by everything that decides them (the rule's source, the library, the sizes, the seed)."""
    key = "|".join([inspect.getsource(spec.rule), repr(spec.library), repr(list(spec.words)), str(WIDTH), str(seed),
                    str(steps), str(batch), torch.__version__])
    root = Path(os.environ.get("RLXF_CACHE") or Path.home() / ".cache" / "rlxf")
    return root / "prompt_task" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


@lru_cache(maxsize=8)
def frozen_model(spec: FrozenSpec = KINDS_SPEC, seed: int = 0, steps: int = STEPS, batch: int = 64,
                 cache: bool = True):
    """A frozen prompt-conditioned model: a 2-layer, 64-wide GPT-2 trained (answer token only) to
    follow ``spec.rule`` on random prompts and contexts. Cached per process, and on disk when ``cache``
    (training takes about 1 minute of CPU, 3-5 minutes on 2 busy cores)."""
    tok = tiny_tokenizer(list(spec.words))
    model = tiny_causal_lm(tok, n_layer=2, n_embd=64, n_head=4, max_positions=WIDTH, seed=seed)
    path = _cache_file(spec, seed, steps, batch)
    if cache and path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return tok, model.eval().requires_grad_(False)
    _train(spec, tok, model, seed, steps, batch)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(model.state_dict(), tmp)
            tmp.replace(path)
        except OSError as err:  # a read-only cache costs only the next process's training
            print(f"rlxf: could not cache the frozen {spec.name} model in {path.parent} ({err}); set RLXF_CACHE")
    return tok, model.eval().requires_grad_(False)


def trained_model(seed: int = 0, steps: int = STEPS, batch: int = 64, cache: bool = True):
    """The prompt task's frozen answerer (:func:`frozen_model` of :data:`KINDS_SPEC`)."""
    return frozen_model(KINDS_SPEC, seed, steps, batch, cache)


def _train(spec: FrozenSpec, tok, model, seed: int, steps: int, batch: int) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
        rng = random.Random(f"prompt-model|{seed}")
        vocab = tok.get_vocab()
        model.train()
        for _ in tqdm(range(steps), desc=f"training the frozen {spec.name} model", leave=False):
            names = [random_prompt(rng, library=spec.library) for _ in range(batch)]
            contexts, targets = spec.examples(names, rng.randrange(1 << 30))
            ids, mask = _batch(tok, [join(n, spec.library) for n in names], contexts)
            loss = torch.nn.functional.cross_entropy(_last_logits(model, ids, mask),
                                                     torch.tensor([vocab[t] for t in targets]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def answer(tok, model, prompts: list[str], contexts: list, chunk: int = 1024) -> list[str]:
    """The frozen model's greedy one-token answers to ``contexts`` (texts, or :class:`Question`) after each prompt."""
    contexts = [c.text if isinstance(c, Question) else c for c in contexts]
    out: list[str] = []
    for i in range(0, len(contexts), chunk):
        ids, mask = _batch(tok, prompts[i : i + chunk], contexts[i : i + chunk])
        out += tok.convert_ids_to_tokens(_last_logits(model, ids, mask).argmax(-1).tolist())
    return out


@dataclass
class PromptTask:
    """A frozen model, question splits and a metric (accuracy). ``calls[split]`` counts prompt
    evaluations (one per prompt scored on the split, or per :meth:`errors` batch on it) and
    ``items[split]`` the questions answered, for equal-budget comparisons."""

    name: str = "kinds"
    seed: int = 0
    calls: Counter = field(default_factory=Counter)
    items: Counter = field(default_factory=Counter)
    respond: Callable[[list[str], list[Question]], list[str]] | None = None  # in place of the model (tests)

    def __post_init__(self):
        self.tok, self.model = (None, None) if self.respond else trained_model(self.seed)
        self.splits = {s: questions(n, qseed) for s, (n, qseed) in SPLITS.items()}
        self._answers: dict[tuple[str, str], list[str]] = {}

    @property
    def hand_written(self) -> str:
        return HAND_WRITTEN[self.name]

    def split(self, split: str) -> list[Question]:
        if split not in self.splits:
            raise ValueError(f"prompt task split must be one of {list(self.splits)}, got {split!r}")
        return self.splits[split]

    def _answers_on(self, prompts: list[str], split: str) -> list[list[str]]:
        qs = self.split(split)
        todo = [p for p in dict.fromkeys(prompts) if (p, split) not in self._answers]
        if todo:
            prompts_flat = [p for p in todo for _ in qs]
            flat = (self.respond(prompts_flat, qs * len(todo)) if self.respond
                    else answer(self.tok, self.model, prompts_flat, qs * len(todo)))
            for i, p in enumerate(todo):
                self._answers[p, split] = flat[i * len(qs) : (i + 1) * len(qs)]
        return [self._answers[p, split] for p in prompts]

    def correct(self, prompts: list[str], split: str) -> np.ndarray:
        """``[len(prompts), items]`` booleans: which questions each prompt gets right (counts as a call)."""
        qs = self.split(split)
        self.calls[split] += len(prompts)
        self.items[split] += len(prompts) * len(qs)
        return np.array([[a == q.gold for a, q in zip(ans, qs)] for ans in self._answers_on(prompts, split)])

    def score(self, prompts: list[str], split: str = "eval") -> np.ndarray:
        """The metric (accuracy on ``split``) of each prompt."""
        return self.correct(prompts, split).mean(1)

    def errors(self, prompt: str, split: str = "train", index=None) -> list[ErrorRecord]:
        """The wrong answers of ``prompt`` on questions ``index`` of ``split`` (all if None), each
        with its error type. Counts as one call on the split."""
        qs = self.split(split)
        index = list(range(len(qs))) if index is None else list(index)
        self.calls[split] += 1
        self.items[split] += len(index)
        answers = self._answers_on([prompt], split)[0]
        out = []
        for i in index:
            q, a = qs[i], answers[i]
            err = error_type(q.kind, q.x, a)
            if err is not None:
                out.append(ErrorRecord(q.text, q.kind, a, q.gold, err))
        return out

    def rule_score(self, prompt: str, split: str = "eval") -> float:
        """The accuracy the hidden rule gives (what a perfectly trained model would score); not counted."""
        names = fragments_of(prompt)
        return float(np.mean([rule_answer(names, q.kind, q.x) == q.gold for q in self.split(split)]))


def rule_respond(prompts: list[str], qs: list[Question]) -> list[str]:
    """What a perfectly trained model answers: the hidden rule itself (``PromptTask(respond=rule_respond)``)."""
    return [rule_answer(fragments_of(p), q.kind, q.x) for p, q in zip(prompts, qs)]


def prompt_task(name: str = "kinds", seed: int = 0) -> PromptTask:
    """A built-in prompt task by name (one so far: ``kinds``)."""
    if name not in HAND_WRITTEN:
        raise ValueError(f"unknown prompt task {name!r}; built-in: {sorted(HAND_WRITTEN)}")
    return PromptTask(name, seed)


__all__ = ["ERROR_TYPES", "FRAGMENTS", "HAND_WRITTEN", "KINDS", "ErrorRecord", "PromptTask", "Question",
           "FrozenSpec", "KINDS_SPEC", "answer", "error_type", "fragments_of", "frozen_model", "join", "prompt_task",
           "random_prompt", "rule_answer", "rule_respond", "trained_model"]
