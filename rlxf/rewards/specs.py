"""Rewards named by a spec string: a user's Python function, or a built-in verifier.

A spec is what a user writes after ``--reward``:

- ``path/to/file.py:fn`` or ``package.module:fn``: a function with TRL's signature
  ``fn(prompts, completions, **columns) -> list[float | None]``. ``columns`` are the
  dataset's extra columns (``answer``, ...), one value per completion. ``None`` means "no
  reward for this sample": it is left out of the loss.
- ``answer_match`` or ``answer_match:COLUMN``: 1 when the last number in the completion
  equals the number in ``COLUMN`` (default ``answer``), else 0.
- ``regex:PATTERN``: 1 when the completion matches ``PATTERN`` (``re.search``), else 0.
- ``length_penalty:TARGET`` or ``length_penalty:TARGET:SCALE``: ``-SCALE * |words - TARGET|``.
- ``DIR``: a saved reward model, rlxf's or any Hugging Face sequence-classification model with
  one label; it scores the rendered prompt + completion with its own tokenizer.
- ``judge:DIR`` or ``judge:file.py:fn`` (pairwise judges, for the preference-based online
  methods): a reward-model directory read as Bradley-Terry, P(a > b) = sigmoid(r_a - r_b), or
  ``fn(prompts, completions_a, completions_b) -> list[float]`` giving P(a is better).

A weight may lead the spec, ``0.5*file.py:fn``; the default is 1. Every output is checked
when it is produced (:func:`checked_values`), so a reward that raises, returns the wrong
length, NaN or a non-number stops the run at that step with its name.

:func:`reward_components` turns specs into :class:`~rlxf.rewards.scoring.Scorer` components.
Like TRL, functions get conversational prompts as message lists and each completion as
``[{"role": "assistant", "content": text}]``, standard ones as strings; completions are decoded
without special tokens.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rlxf.core.cluster import pickle_by_value
from rlxf.rewards.scoring import RewardError, RewardFn, Samples, Scorer, bradley_terry_preference

TextRewardFn = Callable[..., Sequence[Any]]
Preference = Callable[[Samples, torch.Tensor, torch.Tensor], torch.Tensor]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
BUILTINS = ("answer_match", "regex", "length_penalty")


class RewardSpecError(ValueError):
    """A reward spec that cannot be loaded; the message names the spec and what was expected."""


class RewardValueError(RewardError):
    """A reward function's output at some step is unusable; names the reward and the step."""


@dataclass(frozen=True)
class RewardSpec:
    """A loaded spec: its text, weight, and the text-level function."""

    spec: str
    weight: float
    fn: TextRewardFn

    @property
    def name(self) -> str:
        return self.spec


def parse_weight(spec: str) -> tuple[float, str]:
    """``"0.5*file.py:fn"`` -> ``(0.5, "file.py:fn")``; no leading weight means 1."""
    head, star, rest = spec.partition("*")
    if star:
        try:
            return float(head), rest
        except ValueError:
            pass  # a '*' inside a regex, not a weight
    return 1.0, spec


def load_reward(spec: str) -> RewardSpec:
    """Load a reward spec (see the module docstring); raises :class:`RewardSpecError`."""
    weight, body = parse_weight(spec.strip())
    if not body:
        raise RewardSpecError(f"reward {spec!r}: empty spec (expected file.py:fn, module:fn or a built-in: "
                              f"{', '.join(BUILTINS)})")
    name, _, arg = body.partition(":")
    if name in BUILTINS:
        return RewardSpec(spec, weight, _builtin(spec, name, arg))
    if not arg:
        raise RewardSpecError(f"reward {spec!r}: expected file.py:function or module:function, or a built-in "
                              f"({', '.join(BUILTINS)})")
    return RewardSpec(spec, weight, load_function(body, what="reward"))


def _installed(module) -> bool:
    """Whether a Ray worker can import ``module`` by name: rlxf's own, or from an installed package."""
    path, top = getattr(module, "__file__", None) or "", module.__name__.split(".")[0]
    return top == "rlxf" or top in sys.stdlib_module_names or "site-packages" in path or "dist-packages" in path


def load_function(spec: str, what: str = "function") -> Callable:
    """``file.py:fn`` or ``module:fn`` -> the callable, with errors that name the spec."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise RewardSpecError(f"{what} {spec!r}: expected file.py:function or module:function")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise RewardSpecError(f"{what} {spec!r}: file {path} does not exist")
        mod_name = f"rlxf_user_{zlib.crc32(str(path.resolve()).encode()):08x}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - user code may raise anything on import
            del sys.modules[mod_name]
            raise RewardSpecError(f"{what} {spec!r}: importing {path} raised {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:  # noqa: BLE001
            raise RewardSpecError(f"{what} {spec!r}: cannot import module {target} ({type(e).__name__}: {e})") from e
    if not _installed(module):
        pickle_by_value(module)
    fn = getattr(module, attr, None)
    if fn is None:
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise RewardSpecError(f"{what} {spec!r}: {target} has no {attr!r} (it defines: {', '.join(defined) or 'nothing'})")
    if not callable(fn):
        raise RewardSpecError(f"{what} {spec!r}: {attr} in {target} is a {type(fn).__name__}, not a function")
    return fn


# -- built-in verifiers ----------------------------------------------------------------------


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (commas in thousands ignored), or None."""
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def answer_match(column: str = "answer") -> TextRewardFn:
    """1 where the completion's last number equals ``columns[column]``'s number, else 0."""

    def reward(prompts, completions, **columns):
        if column not in columns:
            raise KeyError(f"answer_match needs a column {column!r} in the data (it has: "
                           f"{', '.join(sorted(columns)) or 'no extra columns'})")
        out = []
        for text, answer in zip(map(completion_text, completions), columns[column]):
            want, got = last_number(str(answer)), last_number(text)
            out.append(float(want is not None and got is not None and math.isclose(want, got)))
        return out

    return reward


def regex_reward(pattern: str) -> TextRewardFn:
    """1 where the completion matches ``pattern`` (``re.search``), else 0."""
    compiled = re.compile(pattern)
    return lambda prompts, completions, **_: [float(bool(compiled.search(completion_text(c)))) for c in completions]


def length_penalty(target: float, scale: float = 0.1) -> TextRewardFn:
    """``-scale * |words - target|``: a pull toward ``target`` words."""
    return lambda prompts, completions, **_: [-scale * abs(len(completion_text(c).split()) - target)
                                              for c in completions]


def completion_text(completion: Any) -> str:
    """A completion's text: the string itself, or the content of a chat completion's messages."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return completion


def _builtin(spec: str, name: str, arg: str) -> TextRewardFn:
    if name == "answer_match":
        return answer_match(arg or "answer")
    if name == "regex":
        if not arg:
            raise RewardSpecError(f"reward {spec!r}: regex needs a pattern (regex:PATTERN)")
        try:
            return regex_reward(arg)
        except re.error as e:
            raise RewardSpecError(f"reward {spec!r}: bad regular expression ({e})") from None
    parts = arg.split(":") if arg else []
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or len(numbers) != len(parts):
        raise RewardSpecError(f"reward {spec!r}: expected length_penalty:TARGET or length_penalty:TARGET:SCALE "
                              "(numbers)")
    return length_penalty(*numbers)


# -- calling and checking ----------------------------------------------------------------------


def checked_values(name: str, fn: TextRewardFn, prompts: list, completions: list,
                   columns: dict[str, list], step: int, what: str = "reward", *more: list) -> list[float | None]:
    """Call ``fn(prompts, completions, *more, **columns)`` and check what it returned: one number
    (or None) per completion.

    Raises :class:`RewardValueError` naming the ``what`` (reward or judge) and the step when it
    raises, returns the wrong length, a NaN or infinity, or something that is not a number.
    """
    try:
        out = fn(prompts, completions, *more, **columns)
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise RewardValueError(f"{what} {name!r} raised at step {step}: {type(e).__name__}: {e}") from e
    try:
        out = list(out)
    except TypeError:
        raise RewardValueError(f"{what} {name!r} returned a {type(out).__name__} at step {step} "
                               f"(expected a list of {len(completions)} numbers or None)") from None
    if len(out) != len(completions):
        raise RewardValueError(f"{what} {name!r} returned {len(out)} values at step {step} "
                               f"(expected {len(completions)}, one per completion)")
    values: list[float | None] = []
    for i, v in enumerate(out):
        if v is None:
            values.append(None)
            continue
        if isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
            raise RewardValueError(f"{what} {name!r} returned {v!r} ({type(v).__name__}) for completion {i} "
                                   f"at step {step} (expected a number or None)")
        x = float(v)
        if not math.isfinite(x):
            raise RewardValueError(f"{what} {name!r} returned {x} for completion {i} at step {step} "
                                   "(expected a finite number, or None for no reward)")
        values.append(x)
    return values


# -- specs as Scorer components ---------------------------------------------------------------------


def reward_components(specs: list[str], tokenizer: Any, rows: list[dict], prompts_text: list[str],
                      conversational: bool, judge: bool = False, device: str = "cpu") -> dict[str, tuple[Any, float]]:
    """``{spec: (component, weight)}`` for :class:`~rlxf.rewards.scoring.Scorer`, from spec strings.

    ``rows`` are the dataset rows of the run's prompts (the prompt as written, chat messages or
    text, and the extra columns) and ``prompts_text`` the rendered prompts, aligned with them: a
    component looks its samples up by ``Samples.prompt_index``. ``tokenizer`` decodes the policy's
    completions. With ``judge=True`` every spec must be ``judge:...`` and the values are
    preferences ``preference(samples, i, j) -> P(row i beats row j)``, as INPO, Nash-MD and SPO
    take them; :func:`rlxf.rewards.scoring.group_win_rate` turns one into a reward. Reward models
    and judges run on ``device``.
    """
    view = _TextView(tokenizer, rows, prompts_text, conversational)
    out: dict[str, tuple[Any, float]] = {}
    for spec in specs:
        weight, body = parse_weight(spec.strip())
        is_judge = body.startswith("judge:")
        if is_judge != judge:
            expected = "a judge: judge:DIR or judge:file.py:fn" if judge else "a reward, not a judge"
            raise RewardSpecError(f"reward {spec!r}: expected {expected}")
        if is_judge:
            out[spec] = (judge_preference(spec, body[len("judge:"):], view, device), weight)
        elif Path(body).is_dir():
            out[spec] = (model_component(spec, load_reward_model(spec, body, device), view), weight)
        else:
            out[spec] = (text_component(load_reward(spec), view), weight)
    return out


class _TextView:
    """The texts a reward function sees for a batch of samples, TRL's way (module docstring)."""

    def __init__(self, tokenizer: Any, rows: list[dict], prompts_text: list[str], conversational: bool):
        self.tokenizer, self.rows, self.prompts_text, self.conversational = tokenizer, rows, prompts_text, conversational
        self.extra = sorted({k for r in rows for k in r if k != "prompt"})

    def index(self, s: Samples, name: str) -> list[int]:
        if s.prompt_index is None:
            raise ValueError(f"{name}: the samples carry no prompt_index, so their prompts' texts and columns "
                             "are unknown (collect() sets it)")
        return s.prompt_index

    def completions(self, s: Samples, rows: list[int] | None = None) -> list[str]:
        ids = s.response_ids if rows is None else [s.response_ids[i] for i in rows]
        return [self.tokenizer.decode(r, skip_special_tokens=True) for r in ids]

    def as_written(self, texts: list[str]) -> list:
        return [[{"role": "assistant", "content": t}] for t in texts] if self.conversational else texts

    def prompts(self, idx: list[int]) -> list:
        return [self.rows[i]["prompt"] if self.conversational else self.prompts_text[i] for i in idx]

    def columns(self, idx: list[int]) -> dict[str, list]:
        return {k: [self.rows[i].get(k) for i in idx] for k in self.extra}


def text_component(reward: RewardSpec, view: _TextView) -> RewardFn:
    """A text reward as a component: its outputs checked (None kept: no reward for that sample)."""

    def score(s: Samples) -> list[float | None]:
        idx = view.index(s, f"reward {reward.name!r}")
        return checked_values(reward.name, reward.fn, view.prompts(idx), view.as_written(view.completions(s)),
                              view.columns(idx), s.step)

    return score


def load_reward_model(spec: str, path: str, device: str = "cpu"):
    """A saved reward model (rlxf's or an HF sequence-classification model with one label)."""
    import json

    from rlxf.rewards.model import RewardModel

    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise RewardSpecError(f"reward {spec!r}: directory {path} has no config.json (expected a saved reward model)")
    config = json.loads(config_file.read_text())
    archs = config.get("architectures") or []
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if not any(a.endswith("ForSequenceClassification") for a in archs) or labels != 1:
        raise RewardSpecError(f"reward {spec!r}: {path} holds {', '.join(archs) or 'a model'} with {labels} labels "
                              "(expected a reward model: a sequence-classification model with one label)")
    try:
        return RewardModel.from_pretrained(path, device=device)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise RewardSpecError(f"reward {spec!r}: cannot load the reward model in {path} ({type(e).__name__}: {e})") from e


def model_component(spec: str, model: Any, view: _TextView) -> RewardFn:
    """A reward model scoring each rendered prompt + decoded completion with its own tokenizer."""

    def score(s: Samples) -> torch.Tensor:
        idx = view.index(s, f"reward {spec!r}")
        return model.score_texts([view.prompts_text[i] for i in idx], view.completions(s)).cpu()

    return score


def judge_preference(spec: str, target: str, view: _TextView, device: str = "cpu") -> Preference:
    """``judge:DIR`` (Bradley-Terry on a reward model) or ``judge:file.py:fn`` as a preference."""
    if Path(target).is_dir():
        return bradley_terry_preference(model_component(spec, load_reward_model(spec, target, device), view))
    fn = load_function(target, what="judge")

    def pairwise(s: Samples, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        i, j = torch.as_tensor(i).tolist(), torch.as_tensor(j).tolist()
        idx = view.index(s, f"judge {spec!r}")
        texts = view.completions(s)
        prompts = view.prompts([idx[a] for a in i])
        a, b = view.as_written([texts[x] for x in i]), view.as_written([texts[x] for x in j])
        p = checked_values(spec, fn, prompts, a, {}, s.step, "judge", b)
        for n, v in enumerate(p):
            if v is None or not 0 <= v <= 1:
                raise RewardValueError(f"judge {spec!r} returned {v!r} for pair {n} at step {s.step} "
                                       "(expected P(a is better), a number in [0, 1])")
        return torch.tensor(p)

    return pairwise


def rewards_preference(rewards: dict[str, tuple[RewardFn, float]], beta: float = 1.0) -> Preference:
    """The ``preference(samples, i, j)`` a preference-based method takes when there is no judge:
    Bradley-Terry on the weighted reward sum, P(i beats j) = sigmoid(beta (r_i - r_j)) (None
    rewards handled as the Scorer does)."""
    scorer = Scorer(rewards)
    return bradley_terry_preference(lambda s: scorer(s, s.step)[0], beta)
