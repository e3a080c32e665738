"""Parity with TRL 1.16: for every loss TRL also has, rlxf's TRL-form loss on the same tiny model
and batch gives TRL's loss and gradients (relative tolerance 1e-4).

TRL's own code path runs: a trainer is built on an in-memory model (reference passed
explicitly), its collator makes the batch, and its loss method computes the loss. rlxf reads
the token ids back out of that batch, scores them with its trainer's scoring function and
applies its loss. Everything is in float64 so differences are the formulas', not rounding's.
"""

from __future__ import annotations

import math
import tempfile
import warnings

import pytest
import torch

pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from rlxf.policies.logprobs import response_logps  # noqa: E402
from rlxf.core.steps import Steps  # noqa: E402
from rlxf.objectives import preference as P  # noqa: E402
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer  # noqa: E402

WORDS = "a b c d e f g h i j k l".split()
ROWS = [
    {"prompt": "a b c", "chosen": " d e f", "rejected": " g h"},
    {"prompt": "b", "chosen": " i j k l a", "rejected": " c"},
    {"prompt": "c d e f", "chosen": " a", "rejected": " b b"},
    {"prompt": "e f", "chosen": " g", "rejected": " h i j"},
]
RTOL = 1e-4


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(WORDS)


def lm(tok, seed=0, frozen=False):
    model = tiny_causal_lm(tok, n_layer=2, n_embd=32, n_head=2, seed=seed).double()
    return model.requires_grad_(False).eval() if frozen else model


def common(**kw):
    return dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, report_to="none", use_cpu=True,
                bf16=False, max_length=64, **kw)


def quiet_trainer(cls, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import datasets as ds_lib

        ds_lib.disable_progress_bars()
        return cls(**kw)


def grads(model) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def assert_same(trl_loss, trl_grads, ours, model):
    ours.backward()
    mine = grads(model)
    ours = float(ours.detach())
    assert math.isfinite(ours) and abs(ours - float(trl_loss)) <= RTOL * abs(float(trl_loss)), (ours, trl_loss)
    assert any(float(g.abs().max()) > 0 for g in trl_grads)
    for g_trl, g_ours in zip(trl_grads, mine):  # per parameter tensor, relative in norm
        g_trl = g_trl.to(g_ours.dtype)
        assert float((g_ours - g_trl).norm()) <= RTOL * float(g_trl.norm()) + 1e-12


def ids_where(row: torch.Tensor, keep: torch.Tensor) -> list[int]:
    return row[keep.bool()].tolist()


def score(model, tok, prompts, responses, grad=True) -> Steps:
    with torch.set_grad_enabled(grad):
        steps, _ = response_logps(model, tok.pad_token_id, prompts, responses)
    return steps


# -- DPOTrainer: sigmoid, ipo, robust, hinge, sigmoid + sft, f-divergences, cDPO -------------


@pytest.fixture(scope="module")
def dpo(tok):
    from trl import DPOConfig, DPOTrainer

    model, ref = lm(tok), lm(tok, seed=1, frozen=True)
    trainer = quiet_trainer(DPOTrainer, model=model, ref_model=ref, args=DPOConfig(**common()),
                            train_dataset=datasets.Dataset.from_list(ROWS), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    n = len(ROWS)
    ids, attn, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    prompts = [ids_where(ids[i], attn[i] * (1 - comp[i])) for i in range(n)]
    chosen = [ids_where(ids[i], comp[i]) for i in range(n)]
    rejected = [ids_where(ids[n + i], comp[n + i]) for i in range(n)]
    return trainer, batch, (prompts, chosen, rejected)


def trl_dpo(trainer, batch, loss_types, weights=None, beta=0.1, eps=0.0, f="reverse_kl"):
    trainer.loss_types, trainer.loss_weights = loss_types, weights or [1.0] * len(loss_types)
    trainer.beta, trainer.label_smoothing, trainer.f_divergence_type = beta, eps, f
    loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
    loss.backward()
    return loss.detach(), grads(trainer.model)


def rlxf_pair(trainer, tok, toks):
    prompts, chosen, rejected = toks
    model, ref = trainer.model, trainer.ref_model
    both = score(model, tok, prompts + prompts, chosen + rejected)
    ref_both = score(ref, tok, prompts + prompts, chosen + rejected, grad=False)
    n = len(prompts)
    return (both[:n].replace(ref_logps=ref_both.logps[:n]), both[n:].replace(ref_logps=ref_both.logps[n:]))


DPO_CASES = [
    ("sigmoid", dict(loss_types=["sigmoid"], beta=0.3), lambda c, r: P.dpo_loss(c, r, beta=0.3)),
    ("ipo", dict(loss_types=["ipo"], beta=0.2), lambda c, r: P.ipo_mean_loss(c, r, tau=0.2)),
    ("robust", dict(loss_types=["robust"], beta=0.3, eps=0.2), lambda c, r: P.robust_dpo_loss(c, r, beta=0.3, eps=0.2)),
    ("hinge", dict(loss_types=["hinge"], beta=2.0), lambda c, r: P.hinge_loss(c, r, beta=2.0)),
    ("sigmoid+sft", dict(loss_types=["sigmoid", "sft"], weights=[1.0, 0.7], beta=0.3),
     lambda c, r: P.dpo_sft_loss(c, r, beta=0.3, sft_weight=0.7)),
    ("forward_kl", dict(loss_types=["sigmoid"], beta=0.3, f="forward_kl"),
     lambda c, r: P.fdpo_forward_kl_loss(c, r, beta=0.3)),
    ("js_divergence", dict(loss_types=["sigmoid"], beta=0.3, f="js_divergence"),
     lambda c, r: P.fdpo_js_loss(c, r, beta=0.3)),
]


@pytest.mark.parametrize("name,trl_kwargs,ours", DPO_CASES, ids=[c[0] for c in DPO_CASES])
def test_dpo_trainer_losses_match(dpo, tok, name, trl_kwargs, ours):
    trainer, batch, toks = dpo
    trl_loss, trl_grads = trl_dpo(trainer, batch, **trl_kwargs)
    chosen, rejected = rlxf_pair(trainer, tok, toks)
    assert_same(trl_loss, trl_grads, ours(chosen, rejected).mean(), trainer.model)


def test_cdpo_matches_trl_sigmoid_on_the_batch_and_its_swap(dpo, tok):
    """TRL 1.16 dropped label smoothing from its sigmoid loss; cDPO is (1-eps) times TRL's sigmoid
    loss on the batch plus eps times the same loss with chosen and rejected swapped."""
    trainer, batch, toks = dpo
    n, eps = len(ROWS), 0.2
    swapped = {k: torch.cat([v[n:], v[:n]]) for k, v in batch.items()}
    loss_a, g_a = trl_dpo(trainer, batch, ["sigmoid"], beta=0.3)
    loss_b, g_b = trl_dpo(trainer, swapped, ["sigmoid"], beta=0.3)
    trl_loss = (1 - eps) * loss_a + eps * loss_b
    trl_grads = [(1 - eps) * a + eps * b for a, b in zip(g_a, g_b)]
    chosen, rejected = rlxf_pair(trainer, tok, toks)
    assert_same(trl_loss, trl_grads, P.cdpo_loss(chosen, rejected, beta=0.3, eps=eps).mean(), trainer.model)


# -- experimental ORPO and CPO (SimPO) ------------------------------------------------------


def paired_from_labels(batch, n):
    out = {}
    for side in ("chosen", "rejected"):
        ids, labels, attn = batch[f"{side}_input_ids"], batch[f"{side}_labels"], batch[f"{side}_attention_mask"]
        out[side] = [ids_where(ids[i], labels[i] != -100) for i in range(n)]
        out[f"{side}_prompt"] = [ids_where(ids[i], (labels[i] == -100) & (attn[i] == 1)) for i in range(n)]
        out[f"{side}_full"] = [ids_where(ids[i], attn[i]) for i in range(n)]
    assert out["chosen_prompt"] == out["rejected_prompt"]
    return out


def trl_loss_and_our_scores(trainer, tok):
    """TRL's loss and gradients on ROWS, the pairs as token ids, and our chosen+rejected scores."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    trl_loss, _ = trainer.get_batch_loss_metrics(trainer.model, batch)
    trl_loss.backward()
    trl_grads = grads(trainer.model)
    t = paired_from_labels(batch, len(ROWS))
    prompts = t["chosen_prompt"]
    return trl_loss, trl_grads, t, score(trainer.model, tok, prompts + prompts, t["chosen"] + t["rejected"])


def test_orpo_matches(tok):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    trainer = quiet_trainer(ORPOTrainer, model=lm(tok), args=ORPOConfig(**common(beta=0.25)),
                            train_dataset=datasets.Dataset.from_list(ROWS), processing_class=tok)
    trl_loss, trl_grads, t, both = trl_loss_and_our_scores(trainer, tok)
    full = t["chosen_full"]
    nll = score(trainer.model, tok, [f[:1] for f in full], [f[1:] for f in full])
    ours = P.orpo_trl_loss(both[: len(ROWS)], both[len(ROWS):], lam=0.25, nll_steps=nll).mean()
    assert_same(trl_loss.detach(), trl_grads, ours, trainer.model)


def test_simpo_matches_cpo_trainer(tok):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(**common(beta=2.0, loss_type="simpo", cpo_alpha=0.0, simpo_gamma=0.6))
    trainer = quiet_trainer(CPOTrainer, model=lm(tok), args=args, train_dataset=datasets.Dataset.from_list(ROWS),
                            processing_class=tok)
    trl_loss, trl_grads, t, both = trl_loss_and_our_scores(trainer, tok)
    ours = P.simpo_loss(both[: len(ROWS)], both[len(ROWS):], beta=2.0, gamma=0.6).mean()
    assert_same(trl_loss.detach(), trl_grads, ours, trainer.model)


# -- KTOTrainer --------------------------------------------------------------------------------


def test_kto_matches(tok):
    from trl import KTOConfig, KTOTrainer

    rows = [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 == 0 else r["rejected"], "label": i % 3 == 0}
            for i, r in enumerate(ROWS)]
    model, ref = lm(tok), lm(tok, seed=1, frozen=True)
    args = KTOConfig(**common(beta=0.4, desirable_weight=1.3, undesirable_weight=0.8))
    trainer = quiet_trainer(KTOTrainer, model=model, ref_model=ref, args=args,
                            train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    trl_loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
    trl_loss.backward()
    trl_grads = grads(trainer.model)

    def split(prefix):
        ids, attn, comp = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}completion_mask"]
        prompts = [ids_where(ids[i], attn[i] * (1 - comp[i])) for i in range(len(rows))]
        return prompts, [ids_where(ids[i], comp[i]) for i in range(len(rows))]

    def with_ref(prompts, completions, grad):
        steps = score(model, tok, prompts, completions, grad)
        return steps.replace(ref_logps=score(ref, tok, prompts, completions, grad=False).logps)

    z0 = P.kto_reference_point(with_ref(*split("KL_"), grad=False))
    steps = with_ref(*split(""), grad=True)
    ours = P.kto_loss(steps, batch["label"], z0, beta=0.4, lambda_d=1.3, lambda_u=0.8).mean()
    assert_same(trl_loss.detach(), trl_grads, ours, model)
