"""The language policy: padding-exact log-probs, KV-cache sampling, reference, save/load."""

import pytest
import torch

from rlxf.policies.language import LanguagePolicy
from rlxf.policies.tiny import tiny_causal_lm, tiny_tokenizer

WORDS = [f"w{i}" for i in range(40)]
PROMPTS = [[4, 5, 6], [7, 8, 9, 10, 11, 12, 13], [14]]
RESPONSES = [[20, 21, 22, 2], [23], [24, 25, 26, 27, 28, 29, 30, 31]]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def policy(request):
    tok = tiny_tokenizer(WORDS)
    return LanguagePolicy(tiny_causal_lm(tok, kind=request.param, seed=3), tok)


def test_padded_batch_equals_each_sequence_alone(policy):
    batch = policy.steps(PROMPTS, RESPONSES)
    assert batch.mask.sum(-1).tolist() == [len(r) for r in RESPONSES]
    for i in range(len(PROMPTS)):
        alone = policy.steps(PROMPTS[i : i + 1], RESPONSES[i : i + 1])
        n = len(RESPONSES[i])
        diff = (batch.logps[i, :n] - alone.logps[0, :n]).abs().max().item()
        assert diff <= 1e-5, f"row {i} differs by {diff}"


def test_logps_match_a_manual_unbatched_forward(policy):
    p, r = PROMPTS[1], RESPONSES[2]
    ids = torch.tensor([p + r])
    logits = policy.model(input_ids=ids).logits[0]
    manual = torch.log_softmax(logits[len(p) - 1 : len(p) - 1 + len(r)], -1).gather(1, torch.tensor(r)[:, None])[:, 0]
    ours = policy.steps([p], [r]).logps[0]
    assert torch.allclose(ours, manual, atol=1e-5)


def test_sampler_logps_equal_a_fresh_scoring_pass(policy):
    g = torch.Generator().manual_seed(0)
    ro = policy.sample(PROMPTS, n=5, max_new_tokens=12, generator=g)
    assert len(ro.response_ids) == 15
    assert ro.prompt_ids[:5] == [PROMPTS[0]] * 5  # grouped per prompt
    scored = policy.score(ro.prompt_ids, ro.response_ids)
    diff = ((ro.steps.logps - scored.logps) * scored.mask).abs().max().item()
    assert diff <= 1e-5
    eos = policy.tokenizer.eos_token_id
    for resp, fin in zip(ro.response_ids, ro.finished):
        assert len(resp) <= 12
        assert fin == (resp[-1] == eos)
        assert eos not in resp[:-1]  # nothing after EOS


def test_lean_gpt2_decoder_samples_what_the_hf_forward_samples(policy):
    """The sampler's lean GPT-2 decoder (rlxf.policies.fast_decode) against the generic HF forward:
    the same seed draws the same tokens, with the same log-probs, on a padded batch."""
    from rlxf.policies.fast_decode import supports

    policy.model.eval()
    assert supports(policy.model) == (type(policy.model).__name__ == "GPT2LMHeadModel")
    runs = {}
    for fast in (True, False):
        policy.fast_decode = fast
        runs[fast] = policy.sample(PROMPTS, n=4, max_new_tokens=12, generator=torch.Generator().manual_seed(7))
    assert runs[True].response_ids == runs[False].response_ids
    assert torch.allclose(runs[True].steps.logps, runs[False].steps.logps, atol=1e-5)
    # scoring without gradient goes through the same decoder and matches the HF forward
    slow = policy.score(PROMPTS, RESPONSES)
    policy.fast_decode = True
    fast = policy.score(PROMPTS, RESPONSES)
    assert torch.allclose(fast.logps * fast.mask, slow.logps * slow.mask, atol=1e-5)
    # and training through it (train mode, no dropout in tiny models) gives the HF gradients
    policy.model.train()
    grads = {}
    for flag in (True, False):
        policy.fast_decode = flag
        policy.model.zero_grad()
        steps = policy.steps(PROMPTS, RESPONSES)
        (steps.logps * steps.mask).sum().backward()
        grads[flag] = [p.grad.clone() for p in policy.model.parameters()]
    policy.fast_decode = True
    policy.model.eval()
    policy.model.zero_grad()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[True], grads[False]))


@pytest.mark.parametrize("fast", [True, False])
def test_shared_prefill_samples_what_one_prefill_per_sample_samples(policy, fast):
    """Prefilling each prompt once and copying its cache to its n samples draws, with the same seed,
    the tokens that prefilling every copy draws, with the same log-probs (1e-5), which equal a fresh
    scoring pass; batch_size chunks by prompts (4 // 4 = one prompt's group per chunk here)."""
    policy.model.eval()
    policy.fast_decode = fast
    runs = {}
    for share in (True, False):
        policy.share_prefill = share
        for batch_size in (512, 4):
            runs[share, batch_size] = policy.sample(PROMPTS, n=4, max_new_tokens=12, batch_size=batch_size,
                                                    generator=torch.Generator().manual_seed(11))
    policy.share_prefill, policy.fast_decode = True, True
    for batch_size in (512, 4):
        shared, alone = runs[True, batch_size], runs[False, batch_size]
        assert shared.prompt_ids == alone.prompt_ids == [p for p in PROMPTS for _ in range(4)]
        assert shared.response_ids == alone.response_ids
        assert shared.finished == alone.finished
        assert torch.allclose(shared.steps.logps, alone.steps.logps, atol=1e-5)
        assert torch.equal(shared.steps.mask, alone.steps.mask)
        scored = policy.score(shared.prompt_ids, shared.response_ids)
        assert ((shared.steps.logps - scored.logps) * scored.mask).abs().max() <= 1e-5
    assert len({tuple(r) for r in runs[True, 512].response_ids[:4]}) > 1  # a group's samples differ


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(policy):
    a = policy.sample(PROMPTS, n=2, generator=torch.Generator().manual_seed(1)).response_ids
    b = policy.sample(PROMPTS, n=2, generator=torch.Generator().manual_seed(1)).response_ids
    assert a == b
    greedy = policy.sample(PROMPTS[:1], n=1, max_new_tokens=1, top_p=1e-6,
                           generator=torch.Generator().manual_seed(5)).response_ids[0][0]
    logits, _, _ = policy.logits(PROMPTS[:1], [[0]])
    assert greedy == int(logits[0, 0].argmax())


def test_temperature_changes_sampling_but_not_returned_logps(policy):
    ro = policy.sample(PROMPTS, n=3, temperature=0.5, generator=torch.Generator().manual_seed(2))
    scored = policy.score(ro.prompt_ids, ro.response_ids)
    assert ((ro.steps.logps - scored.logps) * scored.mask).abs().max() <= 1e-5


def test_reference_is_frozen_and_independent(policy):
    ref = policy.reference()
    assert not any(p.requires_grad for p in ref.model.parameters())
    before = ref.steps(PROMPTS, RESPONSES).logps.clone()
    work = policy.copy()
    opt = torch.optim.SGD(work.model.parameters(), lr=0.5)
    (-work.steps(PROMPTS, RESPONSES).sum().sum()).backward()
    opt.step()
    assert torch.equal(ref.steps(PROMPTS, RESPONSES).logps, before)
    assert not torch.allclose(work.steps(PROMPTS, RESPONSES).logps, before)


def test_save_and_load_round_trip(policy, tmp_path):
    policy.save_pretrained(tmp_path / "m")
    loaded = LanguagePolicy.from_pretrained(tmp_path / "m")
    assert torch.allclose(loaded.steps(PROMPTS, RESPONSES).logps, policy.steps(PROMPTS, RESPONSES).logps, atol=1e-6)
    assert loaded.tokenizer.decode([4, 5]) == "w0 w1"
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp directory


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LanguagePolicy.from_pretrained(tmp_path / "nope")


def test_char_tokenizer_round_trips_arithmetic_text():
    tok = tiny_tokenizer(list("0123456789+-*=:\n answer"), split="chars")
    text = "3+4*2=\n4*2=8\nanswer: 11"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
