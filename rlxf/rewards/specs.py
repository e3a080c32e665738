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

A weight may lead the spec, ``0.5*file.py:fn``; the default is 1. Every output is checked
when it is produced (:func:`checked_values`), so a reward that raises, returns the wrong
length, NaN or a non-number stops the run at that step with its name.
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

TextRewardFn = Callable[..., Sequence[Any]]
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
BUILTINS = ("answer_match", "regex", "length_penalty")


class RewardSpecError(ValueError):
    """A reward spec that cannot be loaded; the message names the spec and what was expected."""


class RewardValueError(RuntimeError):
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
        for text, answer in zip(completions, columns[column]):
            want, got = last_number(str(answer)), last_number(text)
            out.append(float(want is not None and got is not None and math.isclose(want, got)))
        return out

    return reward


def regex_reward(pattern: str) -> TextRewardFn:
    """1 where the completion matches ``pattern`` (``re.search``), else 0."""
    compiled = re.compile(pattern)
    return lambda prompts, completions, **_: [float(bool(compiled.search(c))) for c in completions]


def length_penalty(target: float, scale: float = 0.1) -> TextRewardFn:
    """``-scale * |words - target|``: a pull toward ``target`` words."""
    return lambda prompts, completions, **_: [-scale * abs(len(c.split()) - target) for c in completions]


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


def checked_values(name: str, fn: TextRewardFn, prompts: list[str], completions: list[str],
                   columns: dict[str, list], step: int) -> list[float | None]:
    """Call ``fn`` and check what it returned: one number (or None) per completion.

    Raises :class:`RewardValueError` naming the reward and the step when it raises, returns
    the wrong length, a NaN or infinity, or something that is not a number.
    """
    try:
        out = fn(prompts, completions, **columns)
    except Exception as e:  # noqa: BLE001 - user code may raise anything
        raise RewardValueError(f"reward {name!r} raised at step {step}: {type(e).__name__}: {e}") from e
    try:
        out = list(out)
    except TypeError:
        raise RewardValueError(f"reward {name!r} returned a {type(out).__name__} at step {step} "
                               f"(expected a list of {len(completions)} numbers or None)") from None
    if len(out) != len(completions):
        raise RewardValueError(f"reward {name!r} returned {len(out)} values at step {step} "
                               f"(expected {len(completions)}, one per completion)")
    values: list[float | None] = []
    for i, v in enumerate(out):
        if v is None:
            values.append(None)
            continue
        if isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
            raise RewardValueError(f"reward {name!r} returned {v!r} ({type(v).__name__}) for completion {i} "
                                   f"at step {step} (expected a number or None)")
        x = float(v)
        if not math.isfinite(x):
            raise RewardValueError(f"reward {name!r} returned {x} for completion {i} at step {step} "
                                   "(expected a finite number, or None for no reward)")
        values.append(x)
    return values
