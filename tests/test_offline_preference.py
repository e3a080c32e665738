"""The offline preference trainers (pairs and KTO), their data checks and the TRL-form losses."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from rlxf.algorithms.loop import OptimConfig
from rlxf.algorithms.offline_preference import evaluate_pairs, train_pairs
from rlxf.algorithms.offline_unpaired import mismatched_partners, train_unpaired
from rlxf.algorithms.preference_data import (
    PreferenceDataError,
    PreferenceDataWarning,
    comparison_pairs,
    load_pairs,
    load_unpaired,
)
from rlxf.core.runs import Run
from rlxf.core.steps import Steps
from rlxf.data.records import Comparison
from rlxf.objectives import preference as P
from rlxf.policies.language import LanguagePolicy
from rlxf.policies.logprobs import fused_activations, packed_pair_logps, packing_works, response_logps
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

WORDS = "a b c d e f g h i j k l m n".split()


def policy(seed=0) -> LanguagePolicy:
    tok = tiny_tokenizer(WORDS)
    return LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=16, n_head=2, seed=seed), tok)


def make_pairs(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda k: torch.randint(4, 4 + len(WORDS), (k,), generator=g).tolist()  # noqa: E731
    out = []
    for i in range(n):
        out.append((rnd(1 + i % 3), rnd(2 + i % 4) + [2], rnd(1 + i % 5) + [2]))
    return out


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def run_dir(tmp_path, name):
    return Run(tmp_path / name, "x = 1\n")


# -- scoring ---------------------------------------------------------------------------------


def test_response_logps_match_policy_steps():
    pol = policy()
    pairs = make_pairs(6)
    prompts, responses = [p[0] for p in pairs], [p[1] for p in pairs]
    ours, vocab = response_logps(pol.model, pol.tokenizer.pad_token_id, prompts, responses, full_vocab=True)
    ref = pol.steps(prompts, responses)
    assert torch.equal(ours.mask, ref.mask)
    assert torch.allclose(ours.masked(), ref.masked(), atol=1e-5)
    assert torch.allclose(vocab.exp().sum(-1), torch.ones(6, ours.num_steps), atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_packed_pair_scoring_equals_plain_scoring(kind):
    """Prompt shared by chosen and rejected, several pairs per row: same log-probs and gradients."""
    tok = tiny_tokenizer(WORDS)
    model = tiny_causal_lm(tok, kind, n_layer=2, n_embd=16, n_head=2).double()
    rows = make_pairs(9)
    rows[0] = (rows[0][0], rows[0][1] + [5] * 6, rows[0][2])  # chosen and rejected widths differ
    assert packing_works(model, 0)
    packed = packed_pair_logps(model, 0, rows)
    plain = [response_logps(model, 0, [r[0] for r in rows], [r[k] for r in rows])[0] for k in (1, 2)]
    assert packed[0].num_steps != packed[1].num_steps
    grads = []
    for c, r in (packed, plain):
        assert torch.equal(c.mask.bool(), c.mask > 0)
        model.zero_grad()
        (c.sum() * 0.7 - r.sum()).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    for a, b in zip(packed, plain):
        assert torch.equal(a.mask, b.mask) and torch.allclose(a.masked(), b.masked(), rtol=1e-6, atol=1e-9)
    assert (grads[0] - grads[1]).norm() <= 1e-6 * grads[1].norm()  # Llama keeps RoPE in float32
    with torch.no_grad():  # the vocabulary log-probs too (evaluate_pairs' exact KL reads them)
        _, packed_vocab = packed_pair_logps(model, 0, rows, full_vocab=True)
        for k, got in zip((1, 2), packed_vocab):
            want = response_logps(model, 0, [r[0] for r in rows], [r[k] for r in rows], full_vocab=True)[1]
            mask = plain[k - 1].mask[..., None].bool()
            assert torch.allclose((got * mask), (want * mask)[:, : got.shape[1]], rtol=1e-6, atol=1e-9)


def test_fused_activations_same_outputs_and_restored():
    pol = policy()
    pairs = make_pairs(4)
    args = (pol.model, 0, [p[0] for p in pairs], [p[1] for p in pairs])
    before = response_logps(*args)[0].masked()
    kinds = [type(m) for m in pol.model.modules()]
    with pytest.raises(RuntimeError), fused_activations(pol.model):
        assert any(isinstance(m, torch.nn.GELU) for m in pol.model.modules())
        assert torch.allclose(response_logps(*args)[0].masked(), before, atol=1e-6)
        raise RuntimeError("interrupted")
    assert [type(m) for m in pol.model.modules()] == kinds


# -- the pair trainer ----------------------------------------------------------------------------


def train(tmp_path, name, loss=P.dpo_loss, kwargs=None, micro=0, precompute=True, eval_pairs=None, pairs=None):
    pol = policy()
    cfg = OptimConfig(steps=3, batch_size=8, micro_batch_size=micro, lr=1e-2, checkpoint_every=0)
    out = train_pairs(run_dir(tmp_path, name), "dpo", pol, pol.reference(), pairs or make_pairs(), loss,
                      kwargs or {"beta": 0.5}, cfg, seed=0, quiet=True, precompute_ref=precompute,
                      eval_pairs=eval_pairs)
    return pol, out


def captured_loss_fn(monkeypatch, module, trainer, *args, **kwargs):
    """Run ``trainer`` with the optimisation loop replaced by a recorder of ``(make_batch, loss_fn)``."""
    cap = {}
    monkeypatch.setattr(module, "train", lambda run, stage, model, cfg, make_batch, loss_fn, **kw:
                        cap.update(make_batch=make_batch, loss_fn=loss_fn))
    trainer(*args, **kwargs)
    return cap["make_batch"], cap["loss_fn"]


def batch_grad(model, loss_fn, batch, micro):
    model.zero_grad(set_to_none=True)
    for i in range(0, len(batch), micro):
        loss_fn(batch[i : i + micro], batch)[0].backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("loss,kwargs", [(P.dpo_loss, {"beta": 0.5}),
                                         (P.dpo_sft_loss, {"beta": 0.5, "sft_weight": 0.3})])
def test_gradient_accumulation_is_exact(tmp_path, monkeypatch, loss, kwargs):
    import rlxf.algorithms.offline_preference as OP

    pol, ref = policy(0), policy(1)
    cfg = OptimConfig(steps=3, batch_size=8)
    results = []
    for precompute in (True, False):
        make_batch, loss_fn = captured_loss_fn(monkeypatch, OP, train_pairs, run_dir(tmp_path, f"r{precompute}"),
                                               "dpo", pol, ref, make_pairs(), loss, kwargs, cfg, 0,
                                               precompute_ref=precompute)
        batch = make_batch(1)
        results += [batch_grad(pol.model, loss_fn, batch, m) for m in (8, 3, 1)]
    assert results[0].abs().max() > 0
    for g in results[1:]:  # split 8 / 3+3+2 / 1x8, reference precomputed or scored on the fly
        assert torch.allclose(g, results[0], rtol=1e-4, atol=1e-7)


def test_training_with_precomputed_or_live_reference_agrees(tmp_path):
    pre, _ = train(tmp_path, "pre", precompute=True)
    live, _ = train(tmp_path, "live", precompute=False)
    assert not torch.equal(params(pre.model), params(policy().model))
    assert torch.allclose(params(pre.model), params(live.model), atol=1e-3)


def test_first_step_loss_is_log2_and_training_separates_pairs(tmp_path):
    run = run_dir(tmp_path, "r")
    pol = policy()
    pairs = make_pairs(16)
    cfg = OptimConfig(steps=30, batch_size=16, lr=3e-2, checkpoint_every=0)
    final = train_pairs(run, "dpo", pol, pol.reference(), pairs, P.dpo_loss, {"beta": 0.5}, cfg, 0, True,
                        eval_pairs=pairs)
    rows = run.metrics("dpo")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 0
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    evals = run.metrics("dpo_eval")
    assert [r["step"] for r in evals] == [0, 30]
    assert evals[0]["kl"] == pytest.approx(0.0, abs=1e-6) and evals[0]["reward_margin"] == pytest.approx(0, abs=1e-5)
    assert final["reward_accuracy"] > 0.9 and final["reward_margin"] > 0 and final["kl"] > 0
    assert final["logps_chosen"] > evals[0]["logps_chosen"] - 1.0 or final["logps_rejected"] < evals[0]["logps_rejected"]


def test_evaluate_pairs_by_hand():
    pol, ref = policy(0), policy(1)
    pairs = make_pairs(5)
    got = evaluate_pairs(pol, ref, pairs, beta=0.3)
    margins, kls, lw, ll = [], [], [], []
    for p, c, r in pairs:
        with torch.no_grad():
            sw, sl = pol.steps([p], [c]), pol.steps([p], [r])
            rw, rl = ref.steps([p], [c]), ref.steps([p], [r])
            for prompt, resp in ((p, c), (p, r)):
                a = torch.log_softmax(pol.logits([prompt], [resp])[0], -1)
                b = torch.log_softmax(ref.logits([prompt], [resp])[0], -1)
                kls.append(float((a.exp() * (a - b)).sum()))
        margins.append(float(sw.logps.sum() - rw.logps.sum() - sl.logps.sum() + rl.logps.sum()))
        lw.append(float(sw.logps.sum()))
        ll.append(float(sl.logps.sum()))
    assert got["reward_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 5)
    assert got["reward_margin"] == pytest.approx(0.3 * sum(margins) / 5, rel=1e-4)
    assert got["logps_chosen"] == pytest.approx(sum(lw) / 5, rel=1e-4)
    assert got["logps_rejected"] == pytest.approx(sum(ll) / 5, rel=1e-4)
    assert got["kl"] == pytest.approx(sum(kls) / 10, rel=1e-4)


# -- KTO ------------------------------------------------------------------------------------------------


def test_mismatched_partners_is_a_derangement():
    partner = mismatched_partners(50, seed=3)
    assert sorted(partner) == list(range(50)) and all(partner[i] != i for i in range(50))


def kto_examples():
    return [(p, c if i % 3 else r, i % 3 != 0) for i, (p, c, r) in enumerate(make_pairs(12))]


def test_kto_gradient_accumulation_is_exact(tmp_path, monkeypatch):
    """z0 is measured on the whole global batch, so splitting it leaves the gradient unchanged."""
    import rlxf.algorithms.offline_unpaired as OU

    pol, ref = policy(0), policy(1)
    make_batch, loss_fn = captured_loss_fn(monkeypatch, OU, train_unpaired, run_dir(tmp_path, "k"), "kto", pol, ref,
                                           kto_examples(), OptimConfig(steps=2, batch_size=12), 0, beta=0.5)
    batch = make_batch(0)
    whole = batch_grad(pol.model, loss_fn, batch, 12)
    assert whole.abs().max() > 0
    for micro in (5, 1):
        assert torch.allclose(batch_grad(pol.model, loss_fn, batch, micro), whole, rtol=1e-4, atol=1e-7)


def test_kto_learns(tmp_path):
    pol, run = policy(), run_dir(tmp_path, "kto")
    cfg = OptimConfig(steps=12, batch_size=12, lr=3e-2, checkpoint_every=0)
    train_unpaired(run, "kto", pol, pol.reference(), kto_examples(), cfg, seed=0, beta=0.5, quiet=True)
    rows = run.metrics("kto")
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-5)  # sigma(0) = 1/2 for every example at the start
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["reward_desirable"] > 0 > rows[-1]["reward_undesirable"]


# -- TRL-form losses by hand ---------------------------------------------------------------------------


def steps(rows, ref=None):
    width = max(len(r) for r in rows)
    lp = torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows], dtype=torch.float64)
    rf = None if ref is None else torch.tensor([r + [0.0] * (width - len(r)) for r in ref], dtype=torch.float64)
    return Steps(logps=lp, mask=mask, ref_logps=rf)


def test_dpo_sft_by_hand_and_split_invariant_with_global_token_count():
    c = steps([[-1.0, -2.0], [-0.5]], [[-1.5, -2.0], [-0.7]])
    r = steps([[-3.0], [-1.0, -1.0, -1.0]], [[-2.0], [-1.0, -1.5, -0.5]])
    beta, w = 0.5, 0.2
    h = [(-3.0 + 3.5) - (-3.0 + 2.0), (-0.5 + 0.7) - (-3.0 + 3.0)]
    nll_mean = (3.0 + 0.5) / 3  # TRL: the mean over all 3 chosen tokens of the batch
    expected = sum(math.log1p(math.exp(-beta * x)) for x in h) / 2 + w * nll_mean
    assert float(P.dpo_sft_loss(c, r, beta, w).mean().detach()) == pytest.approx(expected, rel=1e-12)
    halves = [P.dpo_sft_loss(c[i : i + 1], r[i : i + 1], beta, w, tokens_per_example=1.5) for i in range(2)]
    assert float(torch.cat(halves).mean().detach()) == pytest.approx(expected, rel=1e-12)
    P.dpo_sft_loss(c, r, beta, w).sum().backward()
    assert (c.logps.grad[c.mask > 0] < 0).all() and (r.logps.grad[r.mask > 0] > 0).all()


def test_orpo_trl_by_hand():
    c, r = steps([[-0.2, -0.4]]), steps([[-1.0, -2.0, -3.0]])
    full = steps([[-2.0, -0.2, -0.4]])  # prompt token then the response
    lam = 0.25

    def log_odds(mean_logp):
        return mean_logp - math.log(1 - math.exp(mean_logp))

    z = log_odds(-0.3) - log_odds(-2.0)
    expected = 2.6 / 3 + lam * math.log1p(math.exp(-z))
    assert float(P.orpo_trl_loss(c, r, lam, nll_steps=full).detach()) == pytest.approx(expected, rel=1e-12)
    without = 0.3 + lam * math.log1p(math.exp(-z))  # response-only NLL when no full sequence is given
    assert float(P.orpo_trl_loss(c, r, lam).detach()) == pytest.approx(without, rel=1e-12)


# -- user data and its checks ------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_pairs_are_dropped_with_a_warning_naming_the_rows(tmp_path):
    pol = policy()
    rows = [
        {"prompt": "a b", "chosen": "c d", "rejected": "e"},  # fine
        {"prompt": "a", "chosen": "c d", "rejected": "c d"},  # chosen == rejected
        {"prompt": "a", "chosen": " ", "rejected": "e"},  # empty response after tokenization
        {"prompt": "a b c d e f g h", "chosen": "c", "rejected": "e"},  # prompt fills max_length
        {"prompt": "b", "chosen": "c d e f g h", "rejected": "c d e f g i"},  # equal once truncated
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    with pytest.warns(PreferenceDataWarning) as caught:
        pairs = load_pairs(path, pol, max_length=6)
    msg = str(caught[0].message)
    assert str(path) in msg and "dropped 4 of 5" in msg
    assert "chosen equals rejected (records 1)" in msg and "a response has no tokens (records 2)" in msg
    assert "prompt fills max_length=6 tokens (records 3)" in msg and "after truncation (records 4)" in msg
    assert len(pairs) == 1 and pairs[0][0] == pol.encode(["a b"])[0]
    assert all(len(p) + len(c) <= 6 and len(p) + len(r) <= 6 for p, c, r in pairs)
    _, out = train(tmp_path, "ok", pairs=pairs * 8, eval_pairs=pairs)
    assert all(math.isfinite(v) for v in out.values())


def test_all_rows_bad_is_an_error():
    pol = policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(PreferenceDataError, match="no usable records"):
            comparison_pairs([Comparison("a", "b", "b")], pol)


def test_conversational_pairs_render_with_the_chat_template(tmp_path):
    pol = policy()
    msg = lambda role, text: {"role": role, "content": text}  # noqa: E731
    rows = [{"chosen": [msg("user", "a b"), msg("assistant", "c d")],
             "rejected": [msg("user", "a b"), msg("assistant", "e")]}]
    (prompt, chosen, rejected), = load_pairs(write_jsonl(tmp_path / "chat.jsonl", rows), pol)
    assert pol.decode(prompt).split() == ["user:", "a", "b", "assistant:"] or len(prompt) > 0
    assert chosen[-1] == rejected[-1] == pol.tokenizer.eos_token_id and chosen != rejected


def test_kto_with_one_class_is_an_error_naming_the_label(tmp_path):
    pol = policy()
    rows = [{"prompt": "a", "completion": "b c", "label": True}, {"prompt": "b", "completion": "d", "label": True}]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    with pytest.raises(PreferenceDataError, match=r"label=true.*add some with label=false"):
        load_unpaired(path, pol)
    rows[1]["label"] = False
    examples = load_unpaired(write_jsonl(tmp_path / "kto2.jsonl", rows), pol)
    assert [e[2] for e in examples] == [True, False]


def test_reference_log_probs_are_the_same_in_memory_sized_chunks():
    """A logits budget that allows one pair per chunk gives the same reference log-probs as one chunk."""
    from rlxf.policies.logprobs import reference_logps

    tok = tiny_tokenizer("a b c d e f".split())
    model = tiny_causal_lm(tok, n_layer=1, n_embd=16, n_head=2).eval()
    pairs = [([4, 5], [6, 7, 2], [5, 2]), ([6], [4, 4, 5, 2], [7, 2]), ([5, 6, 7], [8, 2], [9, 4, 2])]
    whole = reference_logps(model, tok.pad_token_id, pairs)
    one_each = reference_logps(model, tok.pad_token_id, pairs, logits_budget=1)
    for a, b in zip([*whole[0], *whole[1]], [*one_each[0], *one_each[1]]):
        assert torch.allclose(a, b, atol=1e-6)


def test_kto_reference_scores_are_the_same_in_memory_sized_chunks(monkeypatch):
    """KTO's reference pass split into one-row chunks (a tiny logits budget) scores as one chunk."""
    import rlxf.algorithms.offline_unpaired as U
    import rlxf.policies.logprobs as LP

    tok = tiny_tokenizer("a b c d e f".split())
    model = tiny_causal_lm(tok, n_layer=1, n_embd=16, n_head=2).eval()
    prompts, completions = [[4, 5], [6], [5, 6, 7]], [[6, 7, 2], [4, 4, 5, 2], [8, 2]]
    whole = U._score(model, tok.pad_token_id, prompts, completions)
    real = LP.logits_chunk_size
    monkeypatch.setattr(U, "logits_chunk_size", lambda m, w, b: real(m, w, b, logits_budget=1))
    assert U.logits_chunk_size(model, 4, 256) == 1
    for a, b in zip(whole, U._score(model, tok.pad_token_id, prompts, completions)):
        assert torch.allclose(a, b, atol=1e-6)


def test_only_the_pairs_a_short_run_visits_are_scored_under_the_reference():
    """Two steps of 4 over 16 pairs score 8 pairs (the union of those two batches), each equal to its
    score when every pair is scored."""
    from rlxf.algorithms.batching import epoch_batches
    from rlxf.algorithms.offline_preference import visited_reference_logps
    from rlxf.policies.logprobs import reference_logps

    ref, pairs = policy(1), make_pairs()
    cfg = OptimConfig(steps=2, batch_size=4)
    chosen, rejected = visited_reference_logps(ref.model, ref.tokenizer.pad_token_id, pairs, cfg, 3, quiet=True)
    make_batch = epoch_batches(len(pairs), 4, 3)
    assert sorted(chosen) == sorted(rejected) == sorted(make_batch(0) + make_batch(1))
    every = reference_logps(ref.model, ref.tokenizer.pad_token_id, pairs)
    for i in chosen:
        assert torch.allclose(chosen[i], every[0][i], atol=1e-6) and torch.allclose(rejected[i], every[1][i], atol=1e-6)
