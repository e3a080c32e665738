"""Critics and correctors named in a TOML config, for ``rlxf critique-eval`` and the critique lab.

A critic is one ``[[critics]]`` table: ``kind = "simulated"`` (the default) with an error profile
(``miss``, ``false_alarm``, ``misplace``; :class:`rlxf.critique.simulated.CriticProfile`), or
``kind = "lm"`` with ``model`` (a model directory, a ``.gguf`` file or ``smollm2``) asked through
its chat template (:class:`rlxf.labelers.roles.LMRole`). The corrector is the ``[corrector]``
table, the same two kinds (a simulated one has a ``skill``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlxf.core.config import ConfigError, load_config
from rlxf.critique.bench import TASKS, arithmetic_items, code_items
from rlxf.critique.evaluate import MODES, critique_eval, format_table
from rlxf.critique.simulated import CriticProfile, simulated_corrector, simulated_critic

KINDS = ("simulated", "lm")
CRITIC_INSTRUCTION = (
    "Check the answer below. The question comes first, then the answer's steps, one per line, then a line '#'. "
    "Check each step in order and stop at the first wrong one. End with one line: 'verdict: correct' if every step "
    "is right, or 'verdict: incorrect K' where K is the number of the first wrong step.\n\n")
"""What an LM critic is told before each :func:`~rlxf.critique.format.critic_prompt` request (a tiny
critic trained on the format needs no telling; an instruction-tuned model does)."""
CORRECTOR_INSTRUCTION = (
    "Below are a question, an answer to it, a line '#', a critique of the answer and another '#'. Rewrite the "
    "answer, fixing it from the first wrong step the critique names, in the same format. Write only the answer.\n\n")
"""What an LM corrector is told before each :func:`~rlxf.critique.format.corrector_prompt` request."""


@dataclass
class RoleSpec:
    """One critic (or the corrector): ``name`` (critics only), ``kind`` (see the module docstring),
    a simulated critic's profile or a simulated corrector's ``skill``, the role's ``seed``, and an
    LM role's ``model`` and ``max_new_tokens``."""

    name: str = ""
    kind: str = "simulated"
    miss: float = 0.0
    false_alarm: float = 0.0
    misplace: float = 0.0
    notes: bool = True
    skill: float = 0.5
    seed: int = 0
    model: str = ""
    max_new_tokens: int = 96


@dataclass
class ItemsSpec:
    """The items to judge: ``n`` of ``task`` (``arithmetic`` or ``code``), ``wrong_share`` of them
    wrong, drawn with ``seed``; arithmetic ``difficulties`` (operator counts among 1-3)."""

    task: str = "arithmetic"
    n: int = 500
    seed: int = 0
    wrong_share: float = 0.5
    difficulties: list[int] = field(default_factory=lambda: [1, 2, 3])


def _unit(value: float, where: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: expected a number in [0, 1], got {value}")


def check_role(spec: RoleSpec, where: str, critic: bool) -> None:
    """A :class:`ConfigError` naming ``where`` (e.g. ``critics[2]``) and the option at fault."""
    if spec.kind not in KINDS:
        raise ConfigError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {spec.kind!r}")
    for key in ("miss", "false_alarm", "misplace", "skill"):
        _unit(getattr(spec, key), f"{where}.{key}")
    if spec.kind == "lm" and not spec.model:
        raise ConfigError(f"{where}.model: a kind = \"lm\" role needs a model (a directory, a .gguf file or smollm2)")
    if spec.max_new_tokens < 1:
        raise ConfigError(f"{where}.max_new_tokens: expected an integer >= 1, got {spec.max_new_tokens}")
    if critic and not spec.name:
        raise ConfigError(f"{where}.name: every critic needs a name (the table's row label)")


def check_critics(critics: list[RoleSpec], where: str = "critics") -> None:
    for i, spec in enumerate(critics):
        check_role(spec, f"{where}[{i}]", critic=True)
    names = [c.name for c in critics]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: critic names must be distinct, got {names}")


def check_items(spec: ItemsSpec, where: str = "items") -> None:
    if spec.task not in TASKS:
        raise ConfigError(f"{where}.task: expected one of {', '.join(TASKS)}, got {spec.task!r}")
    if spec.n < 1:
        raise ConfigError(f"{where}.n: expected an integer >= 1, got {spec.n}")
    _unit(spec.wrong_share, f"{where}.wrong_share")
    if not spec.difficulties or any(d not in (1, 2, 3) for d in spec.difficulties):
        raise ConfigError(f"{where}.difficulties: expected a non-empty list among 1, 2, 3, got {spec.difficulties}")


def check_modes(modes: list[str], rounds: int) -> None:
    if not modes or any(m not in MODES for m in modes) or len(set(modes)) != len(modes):
        raise ConfigError(f"modes: expected a non-empty list of distinct modes among {', '.join(MODES)}, got {modes}")
    if rounds < 1:
        raise ConfigError(f"rounds: expected an integer >= 1, got {rounds}")


def make_items(spec: ItemsSpec):
    """The items a config names (:func:`rlxf.critique.bench.arithmetic_items` or ``code_items``)."""
    if spec.task == "arithmetic":
        return arithmetic_items(spec.n, spec.seed, tuple(spec.difficulties), spec.wrong_share)
    return code_items(spec.n, spec.seed, spec.wrong_share)


@dataclass
class Instructed:
    """A text model asked with ``instruction`` before every request (an LM role told its job)."""

    model: object  # a TextModel
    instruction: str

    def complete(self, requests: list[str]) -> list[str]:
        return self.model.complete([self.instruction + r for r in requests])


def _lm_role(spec: RoleSpec, instruction: str) -> Instructed:
    from rlxf.labelers.roles import LMRole
    from rlxf.policies.loading import ModelSettings, load_policy

    role = LMRole(load_policy(ModelSettings(path=spec.model), seed=spec.seed), max_new_tokens=spec.max_new_tokens,
                  seed=spec.seed)
    return Instructed(role, instruction)


def make_critic(spec: RoleSpec, task: str):
    """The critic ``spec`` names, for ``task`` answers."""
    if spec.kind == "lm":
        return _lm_role(spec, CRITIC_INSTRUCTION)
    return simulated_critic(CriticProfile(spec.miss, spec.false_alarm, spec.misplace, spec.notes), spec.seed, task)


def make_corrector(spec: RoleSpec, task: str):
    """The corrector ``spec`` names, for ``task`` answers."""
    if spec.kind == "lm":
        return _lm_role(spec, CORRECTOR_INSTRUCTION)
    return simulated_corrector(spec.skill, spec.seed, task)


@dataclass
class CritiqueEvalConfig:
    """``rlxf critique-eval``'s config: the ``[items]``, RealCritic's ``modes`` (``iterative`` runs
    ``rounds`` rounds), the ``[corrector]`` and the ``[[critics]]``."""

    items: ItemsSpec = field(default_factory=ItemsSpec)
    modes: list[str] = field(default_factory=lambda: list(MODES))
    rounds: int = 3
    corrector: RoleSpec = field(default_factory=RoleSpec)
    critics: list[RoleSpec] = field(default_factory=list)


def load_eval_config(path, overrides: list[str] = ()) -> CritiqueEvalConfig:
    """The config at ``path`` with ``--set`` overrides, every option checked before anything runs."""
    cfg = load_config(CritiqueEvalConfig, path, overrides)
    check_items(cfg.items)
    check_modes(cfg.modes, cfg.rounds)
    check_role(cfg.corrector, "corrector", critic=False)
    if not cfg.critics:
        raise ConfigError(f"{path}: critics: expected at least one [[critics]] table (name, kind, profile)")
    check_critics(cfg.critics)
    return cfg


def run_critique_eval(cfg: CritiqueEvalConfig) -> list[dict]:
    """The critique-eval rows of ``cfg`` (:func:`rlxf.critique.evaluate.critique_eval`)."""
    task = cfg.items.task
    critics = {spec.name: make_critic(spec, task) for spec in cfg.critics}
    return critique_eval(critics, make_corrector(cfg.corrector, task), make_items(cfg.items), cfg.modes, cfg.rounds)


def critique_eval_command(path, overrides: list[str] = ()) -> str:
    """What ``rlxf critique-eval CONFIG`` prints: the table."""
    return format_table(run_critique_eval(load_eval_config(path, overrides)))


__all__ = ["CORRECTOR_INSTRUCTION", "CRITIC_INSTRUCTION", "CritiqueEvalConfig", "Instructed", "ItemsSpec", "KINDS",
           "RoleSpec", "check_critics", "check_items", "check_modes", "check_role", "critique_eval_command",
           "load_eval_config", "make_corrector", "make_critic", "make_items", "run_critique_eval"]
