"""The feedback pipeline on a gold-reward task, as resumable stages of a run.

SFT -> comparisons -> reward model -> {DPO, RLOO, best-of-N} -> evaluation -> report.
With ``sft.enabled = false`` a "base" stage takes the place of SFT: it saves ``model.init`` as it
is, and every later stage starts from it (direct RLHF from the base model).
Each stage writes its outputs into ``stages/<name>/`` and a ``done.json``; a stage that
was interrupted restarts from its last checkpoint, a finished one is skipped.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rlxf.algorithms.batching import step_rng
from rlxf.algorithms.evaluate import best_of_n_index, best_of_n_kl, mean_se, paired_gain, sampled_kl
from rlxf.algorithms.offline_preference import train_pairs
from rlxf.algorithms.preference_data import checked_comparisons
from rlxf.algorithms.online.controller import OnlineConfig, OnlineError, build_method, check_config, train_online
from rlxf.algorithms.reward_training import PAIR_LOSSES as RM_LOSSES
from rlxf.algorithms.reward_training import out_of_fold_strength, train_reward_model
from rlxf.algorithms.sft import train_sft
from rlxf.core.runs import atomic_write_text
from rlxf.data.io import DataError, read_records, write_records
from rlxf.data.label_store import StoreError, read_project_records
from rlxf.data.records import Comparison
from rlxf.labelers.simulated import BradleyTerryLabeler, bayes_optimal_accuracy, bradley_terry_prob
from rlxf.lab import report
from rlxf.lab.config import PipelineConfig, online_config, sampling_set_twice
from rlxf.lab.stages import StagedLab
from rlxf.objectives.preference import PAIR_LOSSES
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.logprobs import Pair
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer
from rlxf.rewards.losses import adaptive_margin, flip_low_strength
from rlxf.rewards.model import RewardModel
from rlxf.rewards.scoring import Scorer, model_reward, text_reward
from rlxf.tasks.hidden_pref import HiddenPreferenceTask


def loss_kwargs(loss: Callable, beta: float, extra: dict) -> dict:
    """Hyperparameters for ``loss``: ``beta`` if it takes one, plus ``extra``; unknown names are errors."""
    params = inspect.signature(loss).parameters
    unknown = sorted(set(extra) - set(params))
    if unknown:
        raise PipelineError(f"loss_args: {loss.__name__} has no parameter {', '.join(unknown)} "
                            f"(it takes: {', '.join(list(params)[2:])})")
    return ({"beta": beta} if "beta" in params else {}) | dict(extra)


def records_digest(records: list) -> str:
    """SHA-256 of a list of records (dataclasses), to notice when a live source changed."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(asdict(r), sort_keys=True).encode() + b"\n")
    return h.hexdigest()


RLOO_METHODS = ("rloo", "cost_constrained")  # the rloo stage's methods: plain, or with the task's cost held down


class PipelineError(ValueError):
    """A config or input that the pipeline cannot run with; raised before any stage starts."""


class Pipeline(StagedLab):
    """Runs the stages of ``cfg`` in the run directory ``cfg.run.dir``."""

    Config = PipelineConfig
    # (stage, metric) pairs worth a learning curve in the report, in display order
    CURVES = [
        ("sft", "loss"), ("reward_model", "loss"), ("reward_model", "accuracy"), ("dpo", "loss"),
        ("dpo", "reward_accuracy"), ("rloo", "proxy_reward"), ("rloo", "gold_reward"), ("rloo", "kl"),
        ("rloo", "cost"), ("rloo", "lagrange_lambda"),
    ]

    @staticmethod
    def format_table(summary: dict) -> str:
        return format_table(summary)

    def report_sections(self, summary: dict) -> list[str]:
        """The results table, gold against KL, and the learning curves of :attr:`CURVES`."""
        ev = self.run.result("evaluate")
        d = self.run.dir
        plot_gold_vs_kl(ev["summary"], ev.get("best_of_n_curve", {}), d / "gold_vs_kl.png")
        out = [report.heading("Results on held-out prompts"),
               report.paragraph("Gold reward is the task's hidden objective (never seen by the learners); proxy is "
                                f"the learned reward model. Gains are paired differences against the "
                                f"{'SFT' if self.start == 'sft' else self.start} "
                                "policy on the same prompts (mean ± standard error)."
                                + (" Cost counts the task's harmful words per response." if self.has_cost else "")),
               report.pre(format_table(ev["summary"])),
               report.heading("Gold reward against KL"), report.image("gold_vs_kl.png", "gold vs KL")]
        if report.plot_metric_panels(self.run, self.CURVES, d / "learning_curves.png"):
            out += [report.heading("Learning curves"), report.image("learning_curves.png", "learning curves")]
        return out

    # -- up-front checks --------------------------------------------------
    def validate(self) -> None:
        """Find bad input before the first stage starts: nothing is written on failure."""
        c = self.cfg
        self.validate_model()
        if c.model.kind not in ("gpt2", "llama"):
            raise PipelineError(f"model.kind must be 'gpt2' or 'llama', got {c.model.kind!r}")
        if c.dpo.loss not in PAIR_LOSSES:
            raise PipelineError(f"dpo.loss: unknown loss {c.dpo.loss!r}; known: {', '.join(sorted(PAIR_LOSSES))}")
        loss_kwargs(PAIR_LOSSES[c.dpo.loss], c.dpo.beta, c.dpo.loss_args)
        if c.reward_model.lm_term and c.reward_model.pooling != "sum":
            raise PipelineError('reward_model.lm_term needs reward_model.pooling = "sum" (the LM term is a sum over tokens)')
        self.validate_reward_model()
        if not c.sft.enabled and type(self).stages is not Pipeline.stages:
            raise PipelineError(f"sft.enabled = false: only the pipeline lab can skip its SFT stage (this is the "
                                f"{c.lab} lab)")
        if c.rloo.enabled:
            if c.rloo.method not in RLOO_METHODS:
                raise PipelineError(f"rloo.method: the rloo stage trains with {' or '.join(map(repr, RLOO_METHODS))}, "
                                    f"got {c.rloo.method!r}")
            cfg = online_config(c.rloo, c.generation)
            self.validate_online("rloo", c.rloo, {"rloo": cfg})
            if c.rloo.method == "cost_constrained":
                if not c.task.harmful_words:
                    raise PipelineError('rloo.method = "cost_constrained" holds the cost of task.harmful_words under '
                                        'a limit; set task.harmful_words (words of the task) first')
                try:
                    build_method(cfg)  # the limit and the multiplier's settings
                except (OnlineError, ValueError, TypeError) as e:
                    raise PipelineError(f"rloo.{e}") from None
        self.validate_inputs()

    def validate_reward_model(self) -> None:
        """The reward-model loss and Secrets of RLHF II options, and simulated label noise."""
        r, comp = self.cfg.reward_model, self.cfg.comparisons
        if r.loss not in RM_LOSSES:
            raise PipelineError(f"reward_model.loss: unknown loss {r.loss!r}; known: {', '.join(RM_LOSSES)}")
        if not 0 <= r.label_smoothing < 0.5:
            raise PipelineError(f"reward_model.label_smoothing must be in [0, 0.5), got {r.label_smoothing}")
        if r.margin_scale < 0:
            raise PipelineError(f"reward_model.margin_scale must be >= 0, got {r.margin_scale}")
        if r.strength_ensemble == 1 or r.strength_ensemble < 0:
            raise PipelineError(f"reward_model.strength_ensemble must be 0 (off) or at least 2 members, "
                                f"got {r.strength_ensemble}")
        if not 0 <= r.flip_fraction < 1:
            raise PipelineError(f"reward_model.flip_fraction must be in [0, 1), got {r.flip_fraction}")
        uses = [name for name, on in (("reward_model.flip_fraction > 0", r.flip_fraction > 0),
                                      ('reward_model.loss = "margin"', r.loss == "margin")) if on]
        if uses and not r.strength_ensemble:
            raise PipelineError(f"{' and '.join(uses)} need(s) preference strength: set "
                                f"reward_model.strength_ensemble to the number of members (e.g. 4)")
        if r.strength_ensemble and not uses:
            raise PipelineError('reward_model.strength_ensemble is only used by reward_model.flip_fraction or '
                                'reward_model.loss = "margin"; set one of them or strength_ensemble = 0')
        if not 0 <= comp.flip_fraction <= 1:
            raise PipelineError(f"comparisons.flip_fraction must be in [0, 1], got {comp.flip_fraction}")
        if comp.flip_fraction and (comp.path or comp.project):
            raise PipelineError("comparisons.flip_fraction adds noise to the simulated labeler only; it cannot "
                                "be combined with comparisons.path or comparisons.project")

    def validate_online(self, name: str, section: OnlineConfig, configs: dict[str, OnlineConfig]) -> None:
        """An online section and the configs built from it (by where they come from), checked as
        the controller will check them, before any stage runs."""
        twice = sampling_set_twice(section)
        if twice:
            raise PipelineError(f"{name}.{twice[0]}: online stages sample with [generation]; "
                                f"set generation.{twice[0]} instead")
        for where, cfg in configs.items():
            try:
                check_config(cfg)
            except OnlineError as e:
                raise PipelineError(f"{where}.{e}") from None

    def validate_model(self) -> None:
        """The starting model: built in-process (``tiny``) or an existing HF directory."""
        init, template = self.cfg.model.init, self.cfg.model.chat_template
        if init != "tiny" and not (Path(init) / "config.json").is_file():
            raise PipelineError(f"model.init: model directory {init} does not exist or has no config.json")
        if template and not Path(template).is_file():
            raise PipelineError(f"model.chat_template (--chat-template): {template} is not a file (expected a Jinja "
                                "chat template)")

    def start_model(self) -> str:
        """The model the SFT stage starts from: ``tiny`` or a model directory."""
        return self.cfg.model.init

    @property
    def start(self) -> str:
        """The stage whose policy every later stage starts from: "sft", or "base" with ``sft.enabled = false``."""
        return "sft" if self.cfg.sft.enabled else "base"

    @property
    def has_cost(self) -> bool:
        return bool(self.cfg.task.harmful_words)

    @cached_property
    def tokenizer(self):
        """The starting model's tokenizer, ``model.chat_template`` applied: it renders and checks
        the user's comparisons before any stage runs, as the SFT stage will tokenize them."""
        m, start = self.cfg.model, self.start_model()
        if start == "tiny":
            tok = tiny_tokenizer(self.task.vocabulary())
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(start, local_files_only=True)
        if m.chat_template:
            tok.chat_template = Path(m.chat_template).read_text()
        return tok

    def context_length(self) -> int | None:
        """The starting model's context in tokens (None when its config does not say)."""
        start = self.start_model()
        if start == "tiny":
            return self.cfg.model.max_positions
        cfg = json.loads((Path(start) / "config.json").read_text())
        return cfg.get("max_position_embeddings") or cfg.get("n_positions")

    def validate_inputs(self) -> None:
        """User comparisons (read and checked row by row) and the task config; shared by every lab."""
        c = self.cfg.comparisons
        if c.path and c.project:
            raise PipelineError("comparisons: set either path (a dataset file) or project (a label project), not both")
        try:
            self.task  # noqa: B018 - builds and checks the task config (the tiny tokenizer needs it)
        except ValueError as e:
            raise PipelineError(f"task: {e}") from None
        if c.path:
            # rendered with the model's chat template, and checked against its context: a row that
            # cannot be used is reported here, naming the user's file, before SFT runs
            records = read_records(c.path, kind="comparison", tokenizer=self.tokenizer)
            if not records:
                raise DataError(c.path, None, "holds no comparisons (expected prompt/chosen/rejected rows)")
            checked_comparisons(records, self.tokenizer, self.context_length(), c.path)
            self._user_comparisons = records
        if c.project and not self._project_comparisons():
            raise PipelineError(f"comparisons.project: {c.project} has no preference labels yet (ties and skips "
                                f"are not comparisons); label some with 'rlxf label serve --project {c.project}'")

    def _project_comparisons(self) -> list[Comparison]:
        """Every preference label of ``comparisons.project`` so far, read fresh from its store."""
        try:
            return read_project_records(self.cfg.comparisons.project, "comparison")
        except (FileNotFoundError, StoreError) as e:
            raise PipelineError(f"comparisons.project: {e}") from None

    def source_digests(self) -> dict[str, str]:
        """Digest of the live input each stage read, by stage name: a finished stage whose
        input changed since it ran (new labels in a label project) runs again, with every
        stage after it."""
        if not self.cfg.comparisons.project:
            return {}
        return {"comparisons": records_digest(self._project_comparisons())}

    @cached_property
    def task(self) -> HiddenPreferenceTask:
        return HiddenPreferenceTask(self.cfg.task)

    # -- shared artefacts -------------------------------------------------
    def _model_dir(self, stage: str) -> Path:
        return self.run.dir / "stages" / stage / "model"

    def policy(self, stage: str) -> LanguagePolicy:
        return LanguagePolicy.from_pretrained(self._model_dir(stage))

    def reward_model(self) -> RewardModel:
        return RewardModel.from_pretrained(self._model_dir("reward_model"))

    def _prompt_ids(self, policy: LanguagePolicy, prompts: list[str]) -> list[list[int]]:
        return policy.encode(prompts)

    def _texts(self, policy: LanguagePolicy, responses: list[list[int]]) -> list[str]:
        return [policy.decode(r) for r in responses]

    def _gold(self, prompts: list[str], texts: list[str], finished: list[bool]) -> np.ndarray:
        return np.array([self.task.gold(p, t, f) for p, t, f in zip(prompts, texts, finished)])

    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(step_rng(self.seed, 10**6, salt).integers(2**62)))

    def _sample(self, policy: LanguagePolicy, prompt_ids, n: int, salt: int):
        g = self.cfg.generation
        return policy.sample(prompt_ids, n=n, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                             top_p=g.top_p, generator=self._generator(salt))

    # -- stages -----------------------------------------------------------
    def stages(self) -> list[tuple[str, Callable[[], dict]]]:
        c = self.cfg
        out = [("sft", self.stage_sft) if c.sft.enabled else ("base", self.stage_base),
               ("comparisons", self.stage_comparisons), ("reward_model", self.stage_reward_model)]
        if c.dpo.enabled:
            out.append(("dpo", self.stage_dpo))
        if c.rloo.enabled:
            out.append(("rloo", self.stage_rloo))
        out.append(("evaluate", self.stage_evaluate))
        return out

    def initial_policy(self) -> LanguagePolicy:
        """``model.init`` as it is: a tiny model built in-process (seeded by the run), or a model directory."""
        c = self.cfg
        if c.model.init == "tiny":
            tok = tiny_tokenizer(self.task.vocabulary())
            m = c.model
            model = tiny_causal_lm(tok, m.kind, m.n_layer, m.n_embd, m.n_head, m.max_positions, seed=self.seed)
            return LanguagePolicy(model, tok)
        policy = LanguagePolicy.from_pretrained(c.model.init)
        policy.tokenizer.chat_template = self.tokenizer.chat_template  # model.chat_template, saved with it
        return policy

    def stage_base(self) -> dict:
        """With ``sft.enabled = false``: the starting policy, untrained, saved for the later stages."""
        self.initial_policy().save_pretrained(self._model_dir("base"))
        return {"model": self.cfg.model.init}

    def stage_sft(self) -> dict:
        c = self.cfg
        policy = self.initial_policy()
        corpus = self.task.corpus(c.sft.corpus_size, seed=self.seed)
        prompts = policy.encode([s.prompt for s in corpus])
        responses = policy.encode_responses([s.response for s in corpus])
        train_sft(self.run, "sft", policy, prompts, responses, c.sft.optim, self.seed, self.quiet)
        policy.save_pretrained(self._model_dir("sft"))
        last = self.run.metrics("sft")[-1]
        return {"final_loss": last["loss"], "corpus_size": len(corpus)}

    def stage_comparisons(self) -> dict:
        c = self.cfg.comparisons
        path = self.run.stage_dir("comparisons") / "comparisons.jsonl"
        if c.path:
            write_records(self._user_comparisons, path)
            return {"source": c.path, "n_pairs": len(self._user_comparisons)}
        if c.project:
            records = self._project_comparisons()
            write_records(records, path)
            return {"source": c.project, "n_pairs": len(records), "source_digest": records_digest(records)}
        sft = self.policy(self.start)
        rng = step_rng(self.seed, 0, salt=21)
        prompts = self.task.sample_prompts(c.n_pairs, "train", rng)
        ro = self._sample(sft, self._prompt_ids(sft, prompts), n=2, salt=1)
        texts = self._texts(sft, ro.response_ids)
        gold = self._gold([p for p in prompts for _ in range(2)], texts, ro.finished)
        labeler = BradleyTerryLabeler(c.labeler_beta, seed=self.seed)
        first = labeler.prefers_first(gold[0::2], gold[1::2])
        # unfinished, empty or identical responses carry no usable preference
        usable = [i for i in range(len(prompts)) if ro.finished[2 * i] and ro.finished[2 * i + 1]
                  and texts[2 * i] != texts[2 * i + 1] and texts[2 * i] and texts[2 * i + 1]]
        flipped = step_rng(self.seed, 0, salt=23).choice(usable, round(c.flip_fraction * len(usable)), replace=False)
        first[flipped] = ~first[flipped]  # simulated label noise on top of the labeler's own
        records, agree = [], []
        for i in usable:
            prompt, a, b = prompts[i], texts[2 * i], texts[2 * i + 1]
            chosen, rejected = (a, b) if first[i] else (b, a)
            records.append(Comparison(prompt, chosen, rejected))
            if gold[2 * i] != gold[2 * i + 1]:
                agree.append(bool(first[i]) == bool(gold[2 * i] > gold[2 * i + 1]))
        write_records(records, path)
        return {"n_pairs": len(records), "labeler_agreement_with_gold": float(np.mean(agree)),
                "flipped_labels": len(flipped),
                "bayes_optimal_accuracy": bayes_optimal_accuracy(gold[0::2], gold[1::2], c.labeler_beta)}

    def comparisons(self, policy: LanguagePolicy) -> tuple[list[Comparison], list[Pair]]:
        """The run's usable comparisons and their token pairs, aligned. Rows without a learning
        signal are dropped with one warning (:func:`checked_comparisons`). Tokenized once per run:
        every stage reads them with the SFT tokenizer, so the result is kept for the next stage."""
        path = self.run.stage_dir("comparisons") / "comparisons.jsonl"
        cfg, stat = policy.model.config, path.stat()
        max_length = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        key = (stat.st_mtime_ns, stat.st_size, policy.tokenizer.name_or_path, len(policy.tokenizer), max_length)
        if getattr(self, "_comparisons", (None,))[0] != key:
            records = read_records(path)
            source = self.cfg.comparisons.path or str(path)  # warnings name the user's file when there is one
            kept, pairs = checked_comparisons(records, policy, max_length, source)
            self._comparisons = (key, [records[i] for i in kept], pairs)
        return self._comparisons[1], self._comparisons[2]

    def _pairs(self, policy: LanguagePolicy) -> list[Pair]:
        return self.comparisons(policy)[1]

    def _new_reward_model(self) -> RewardModel:
        r = self.cfg.reward_model
        return RewardModel.from_pretrained(self._model_dir(self.start), pooling=r.pooling, lm_term=r.lm_term)

    def _secrets_ii(self, records: list[Comparison], pairs: list) -> tuple[list, list[float] | None, dict]:
        """Secrets of RLHF II on the training pairs: measure each pair's preference strength with
        ``strength_ensemble`` held-out members, flip the lowest-strength labels, and turn strength
        into margins for the "margin" loss. Returns (pairs, margins, what it did)."""
        r = self.cfg.reward_model
        if not r.strength_ensemble:
            return pairs, None, {}
        strength = out_of_fold_strength(self.run, "reward_model_strength", self._new_reward_model, pairs,
                                        r.strength_ensemble, r.optim, self.seed, self.quiet)
        flip = flip_low_strength(strength, r.flip_fraction)
        info = {"strength_mean": float(strength.mean()), "strength_negative": float((strength < 0).float().mean()),
                "strength_flips": int(flip.sum())}
        if not (self.cfg.comparisons.path or self.cfg.comparisons.project):  # simulated: gold can grade the flips
            gc = self._gold([x.prompt for x in records], [x.chosen for x in records], [True] * len(records))
            gr = self._gold([x.prompt for x in records], [x.rejected for x in records], [True] * len(records))
            decided, wrong = torch.from_numpy(gc != gr), torch.from_numpy(gc < gr)
            info["label_agreement_with_gold_before_flips"] = float((~wrong)[decided].float().mean())
            info["label_agreement_with_gold_after_flips"] = float((wrong == flip)[decided].float().mean())
            # the share of flipped labels that were wrong (NaN when nothing was flipped)
            info["flipped_labels_wrong_before"] = float(wrong[flip & decided].float().mean())
        pairs = [(p, rj, ch) if f else (p, ch, rj) for (p, ch, rj), f in zip(pairs, flip.tolist())]
        strength = torch.where(flip, -strength, strength)
        margins = adaptive_margin(strength, r.margin_scale).tolist() if r.loss == "margin" else None
        return pairs, margins, info

    def stage_reward_model(self) -> dict:
        c = self.cfg
        rm = self._new_reward_model()
        sft = self.policy(self.start)
        pairs, margins, secrets = self._secrets_ii(*self.comparisons(sft))
        r = c.reward_model
        train_reward_model(self.run, "reward_model", rm, pairs, r.optim, self.seed, self.quiet, loss=r.loss,
                           eps=r.label_smoothing, margins=margins)
        rm.save_pretrained(self._model_dir("reward_model"))
        # held-out pairs of SFT samples on test prompts, ordered by gold
        prompts = self.task.sample_prompts(c.reward_model.held_out_pairs, "test", step_rng(self.seed, 0, salt=22))
        ro = self._sample(sft, self._prompt_ids(sft, prompts), n=2, salt=2)
        texts = self._texts(sft, ro.response_ids)
        gold = self._gold([p for p in prompts for _ in range(2)], texts, ro.finished)
        keep = [i for i in range(len(prompts)) if gold[2 * i] != gold[2 * i + 1]]
        pairs = [(ro.prompt_ids[2 * i], ro.response_ids[2 * i], ro.response_ids[2 * i + 1]) for i in keep]
        gold_first = torch.tensor([bool(gold[2 * i] > gold[2 * i + 1]) for i in keep])
        ga, gb = gold[[2 * i for i in keep]], gold[[2 * i + 1 for i in keep]]
        beta = c.comparisons.labeler_beta
        rm_first = rm.score([p[0] for p in pairs], [p[1] for p in pairs]) > rm.score(
            [p[0] for p in pairs], [p[2] for p in pairs])
        p_first = bradley_terry_prob(ga, gb, beta)
        # expected agreement with a fresh beta-labeler's answer, to set against the Bayes-optimal rate
        vs_labeler = float(np.mean(np.where(rm_first.numpy(), p_first, 1 - p_first)))
        return secrets | {"held_out_accuracy_vs_gold": float((rm_first == gold_first).float().mean()),
                          "held_out_accuracy_vs_labeler": vs_labeler, "held_out_pairs": len(keep),
                          "bayes_optimal_accuracy": bayes_optimal_accuracy(ga, gb, beta)}

    def stage_dpo(self) -> dict:
        c = self.cfg.dpo
        policy = self.policy(self.start)
        ref = policy.reference()
        kwargs = loss_kwargs(PAIR_LOSSES[c.loss], c.beta, c.loss_args)
        train_pairs(self.run, "dpo", policy, ref, self._pairs(policy), PAIR_LOSSES[c.loss], kwargs, c.optim,
                    self.seed, self.quiet)
        policy.save_pretrained(self._model_dir("dpo"))
        return {"final_loss": self.run.metrics("dpo")[-1]["loss"]}

    def stage_rloo(self) -> dict:
        policy = self.policy(self.start)
        prompts = self.task.prompts("train")
        cfg = online_config(self.cfg.rloo, self.cfg.generation)
        gold = text_reward(policy.decode, self.task.gold)  # a monitor: logged, never seen by the learner
        # the cost is a monitor too: only the cost_constrained method reads it (as batch.parts["cost"])
        cost = {"cost": text_reward(policy.decode, self.task.cost)} if self.has_cost else {}
        scorer = Scorer({"rm": (model_reward(self.reward_model()), 1.0)}, monitors={"gold": gold, **cost})
        train_online(self.run, "rloo", policy, policy.reference(), policy.encode(prompts), scorer, cfg, self.seed,
                     quiet=self.quiet)
        policy.save_pretrained(self._model_dir("rloo"))
        return {"final_proxy_reward": self.run.metrics("rloo")[-1]["proxy_reward"]}

    def stage_evaluate(self) -> dict:
        c = self.cfg
        prompts = self.task.prompts("test")[: c.eval.n_prompts]
        if len(prompts) < c.eval.n_prompts:
            raise PipelineError(f"eval.n_prompts={c.eval.n_prompts} but the task has {len(prompts)} test prompts")
        start = self.start  # "sft", or "base" without an SFT stage: gains and KL are measured against it
        sft, rm = self.policy(start), self.reward_model()
        prompt_ids = sft.encode(prompts)
        rows, per_prompt = {}, {}

        def measure(name: str, policy: LanguagePolicy, salt: int) -> None:
            ro = self._sample(policy, prompt_ids, n=1, salt=salt)
            texts = self._texts(policy, ro.response_ids)
            gold = self._gold(prompts, texts, ro.finished)
            proxy = rm.score(ro.prompt_ids, ro.response_ids).numpy()
            kl = sampled_kl(ro.steps, sft.score(ro.prompt_ids, ro.response_ids)).numpy()
            per_prompt[name] = gold
            rows[name] = {"gold": gold, "proxy": proxy, "kl": float(kl.mean()), "kl_kind": "sampled"}
            if self.has_cost:
                rows[name]["cost"] = np.array([self.task.cost(p, t) for p, t in zip(prompts, texts)])

        measure(start, sft, salt=100)
        for i, name in enumerate(("dpo", "rloo")):
            if getattr(c, name).enabled:
                measure(name, self.policy(name), salt=101 + i)
        bon_curve = {}
        if c.best_of_n.enabled:
            n = c.best_of_n.n
            ro = self._sample(sft, prompt_ids, n=n, salt=200)
            texts = self._texts(sft, ro.response_ids)
            gold = self._gold([p for p in prompts for _ in range(n)], texts, ro.finished).reshape(-1, n)
            proxy = rm.score(ro.prompt_ids, ro.response_ids).reshape(-1, n)
            sizes = [2**i for i in range(int(math.log2(n)) + 1)] + ([n] if n & (n - 1) else [])
            for size in sizes:
                pick = best_of_n_index(proxy[:, :size]).numpy()
                g = gold[np.arange(len(prompts)), pick]
                p = proxy[:, :size].max(1).values.numpy()
                bon_curve[size] = {"gold": float(g.mean()), "proxy": float(p.mean()), "kl": best_of_n_kl(size)}
            pick = best_of_n_index(proxy).numpy()
            rows[f"best_of_{n}"] = {"gold": gold[np.arange(len(prompts)), pick], "proxy": proxy.max(1).values.numpy(),
                                    "kl": best_of_n_kl(n), "kl_kind": "analytic"}
            if self.has_cost:
                texts = np.array(texts, dtype=object).reshape(-1, n)[np.arange(len(prompts)), pick]
                rows[f"best_of_{n}"]["cost"] = np.array([self.task.cost(p, t) for p, t in zip(prompts, texts)])
        summary = {}
        for name, r in rows.items():
            gm, gse = mean_se(r["gold"])
            gain, gain_se = paired_gain(r["gold"], rows[start]["gold"])
            summary[name] = {"gold_mean": gm, "gold_se": gse, "proxy_mean": float(np.mean(r["proxy"])),
                             "kl": r["kl"], "kl_kind": r["kl_kind"], f"gain_vs_{start}": gain, "gain_se": gain_se}
            if "cost" in r:
                summary[name]["cost_mean"], summary[name]["cost_se"] = mean_se(r["cost"])
        atomic_write_text(self.run.dir / "summary.json", json.dumps(summary, indent=2))
        return {"summary": summary, "best_of_n_curve": bon_curve, "n_prompts": len(prompts)}


def format_table(summary: dict) -> str:
    """The summary as a fixed-width text table (gains against the first row, SFT or base; a cost
    column when the task has harmful words)."""
    start = next(iter(summary))
    cost = any("cost_mean" in r for r in summary.values())
    head = (f"{'policy':<12} {'gold reward':>16} {'gain vs ' + ('SFT' if start == 'sft' else start):>16} "
            f"{'proxy':>8} {'KL':>7}  KL estimate" + (f" {'cost':>16}" if cost else ""))
    lines = [head, "-" * len(head)]
    for name, r in summary.items():
        gain = "" if name == start else f"{r[f'gain_vs_{start}']:+.3f} ± {r['gain_se']:.3f}"
        line = (f"{name:<12} {r['gold_mean']:>8.3f} ± {r['gold_se']:.3f} {gain:>16} {r['proxy_mean']:>8.3f} "
                f"{r['kl'] + 0.0 if abs(r['kl']) >= 5e-4 else 0.0:>7.3f}  {r['kl_kind']:<11}")  # no "-0.000"
        lines.append((line + (f" {r['cost_mean']:>8.3f} ± {r['cost_se']:.3f}" if "cost_mean" in r else "")).rstrip())
    return "\n".join(lines)


def plot_gold_vs_kl(summary: dict, bon_curve: dict, path: Path) -> None:
    """Gold reward (± s.e.) of each trained policy against its KL from SFT, and the best-of-N
    curve (gold and proxy) against its analytic KL."""
    fig, ax = report.plt.subplots(figsize=(6.5, 4.5))
    if bon_curve:
        ns = sorted(bon_curve, key=int)
        kls = [bon_curve[n]["kl"] for n in ns]
        ax.plot(kls, [bon_curve[n]["gold"] for n in ns], "o-", color="C2", label="best-of-N gold")
        ax.plot(kls, [bon_curve[n]["proxy"] for n in ns], "o--", color="C2", alpha=0.5, label="best-of-N proxy")
        for n, x in zip(ns, kls):
            ax.annotate(f"N={n}", (x, bon_curve[n]["gold"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    for i, (name, r) in enumerate(summary.items()):
        if name.startswith("best_of_"):
            continue
        ax.errorbar(r["kl"], r["gold_mean"], yerr=r["gold_se"], fmt="s", color=f"C{(i + 3) % 10}", capsize=3,
                    label=f"{name} gold")
    start = next(iter(summary), "sft")
    ax.set_xlabel(f"KL from the {'SFT' if start == 'sft' else start} policy (nats; best-of-N analytic, others sampled)")
    ax.set_ylabel("reward")
    ax.set_title(f"Gold reward against KL from {'SFT' if start == 'sft' else start}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    report.save_figure(fig, path)
