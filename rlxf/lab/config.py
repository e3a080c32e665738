"""The config of a pipeline run: one dataclass per TOML section (online stages extend OnlineConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.online.controller import OnlineConfig
from rlxf.core.cluster import ScaleSettings
from rlxf.tasks.hidden_pref import HiddenPrefConfig


@dataclass
class RunSection(ScaleSettings):
    """``report_to``: trackers that also get every metrics line ("tensorboard", "wandb", "trackio").
    The scale settings (``executor``, ``learner_workers``, ...: :class:`ScaleSettings`) say where the
    work runs, not what it computes."""

    dir: str = "runs/quickstart"
    seed: int = 0
    report_to: list[str] = field(default_factory=list)


@dataclass
class ModelSection:
    """``init = "tiny"`` builds a small model in-process; otherwise a local HF model directory.
    ``chat_template``: a Jinja file for a tokenizer without a chat template of its own (it renders
    conversational comparisons)."""

    init: str = "tiny"
    chat_template: str = ""
    kind: str = "gpt2"  # tiny models only: gpt2 or llama
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    max_positions: int = 64


@dataclass
class GenerationSection:
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class SFTSection:
    """``enabled = false`` (pipeline lab only): no SFT; every stage starts from ``model.init`` as it is
    (the base policy), with KL to it (direct RLHF from the base model)."""

    enabled: bool = field(default=True, metadata={"identity": "omit_default"})  # omitted from old runs' config
    corpus_size: int = 20000
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=600, batch_size=64, lr=3e-3, warmup_steps=30))


@dataclass
class ComparisonsSection:
    """Comparisons come from ``path`` (JSONL, Parquet or a saved HF dataset) when set; from
    the preference labels of a feedback-app project directory (``rlxf label init``) when
    ``project`` is set, re-read every time the run is invoked; otherwise pairs of SFT samples
    labelled by a simulated Bradley-Terry labeler."""

    path: str = ""
    project: str = ""
    n_pairs: int = 3000
    labeler_beta: float = 1.0
    flip_fraction: float = 0.0  # simulated labeler only: flip this share of its labels (seeded label noise)


@dataclass
class RewardModelSection:
    held_out_pairs: int = 1000
    pooling: Literal["last", "sum"] = "last"  # "last" (HF's last-token head) or "sum" (the head summed over tokens)
    lm_term: bool = False  # "sum" only: add a learned multiple of the SFT backbone's log-likelihood
    # Pair loss: "bt" (Bradley-Terry), "smoothed" (label-smoothed BT) or "margin" (BT with Secrets of
    # RLHF II's adaptive margin, scale * max(strength, 0); needs strength_ensemble).
    loss: str = "bt"
    label_smoothing: float = 0.1  # "smoothed": trust each label 1 - label_smoothing
    margin_scale: float = 1.0  # "margin": the margin per unit of preference strength
    # Preference strength (Secrets of RLHF II): 0 = off, N >= 2 = N reward models, each trained on all
    # but one N-th of the pairs, give the strength of the pairs they did not see.
    strength_ensemble: int = 0
    flip_fraction: float = 0.0  # flip the labels of this share of pairs with the lowest (negative) strength
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=200, batch_size=64, lr=1e-3, warmup_steps=20))


@dataclass
class DPOSection:
    enabled: bool = True
    loss: str = "dpo"  # any name in rlxf.objectives.preference.PAIR_LOSSES
    beta: float = 0.1  # passed to losses that take beta
    loss_args: dict[str, float] = field(default_factory=dict)  # other hyperparameters, e.g. {eps = 0.1}
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=150, batch_size=64, lr=1e-3, warmup_steps=15))


SAMPLING = ("max_new_tokens", "temperature", "top_p")  # OnlineConfig fields a lab takes from [generation]


@dataclass
class RLOOSection(OnlineConfig):
    """The RLOO stage: an :class:`OnlineConfig` for ``train_online`` (method ``rloo``, KL folded into
    the reward as k1 with coefficient ``kl.coef``). Sampling follows ``[generation]``."""

    enabled: bool = True
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=150, batch_size=32, lr=5e-4, warmup_steps=10))


def sampling_set_twice(section: OnlineConfig) -> list[str]:
    """The sampling fields a lab section moved off their defaults: labs sample with [generation],
    so a value here would be ignored."""
    default = OnlineConfig()
    return [k for k in SAMPLING if getattr(section, k) != getattr(default, k)]


def online_config(section: OnlineConfig, generation: GenerationSection, **changes) -> OnlineConfig:
    """A plain :class:`OnlineConfig` from a lab section that extends it: the shared fields,
    sampling from ``[generation]``, then ``changes``."""
    shared = {f.name: getattr(section, f.name) for f in fields(OnlineConfig)}
    return OnlineConfig(**{**shared, **{k: getattr(generation, k) for k in SAMPLING}, **changes})


@dataclass
class BestOfNSection:
    enabled: bool = True
    n: int = 16


@dataclass
class EvalSection:
    n_prompts: int = 500


@dataclass
class PipelineConfig:
    lab: str = "pipeline"
    run: RunSection = field(default_factory=RunSection)
    task: HiddenPrefConfig = field(default_factory=HiddenPrefConfig)
    model: ModelSection = field(default_factory=ModelSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    sft: SFTSection = field(default_factory=SFTSection)
    comparisons: ComparisonsSection = field(default_factory=ComparisonsSection)
    reward_model: RewardModelSection = field(default_factory=RewardModelSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    rloo: RLOOSection = field(default_factory=RLOOSection)
    best_of_n: BestOfNSection = field(default_factory=BestOfNSection)
    eval: EvalSection = field(default_factory=EvalSection)
