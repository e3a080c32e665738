"""Reward specs: user functions by file or module, built-in verifiers, and output checks."""

from __future__ import annotations

import math

import pytest

from rlxf.rewards.specs import (
    RewardSpecError,
    RewardValueError,
    checked_values,
    last_number,
    load_reward,
)

USER_FILE = '''
def correct(prompts, completions, answer, **kw):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

def skip_short(prompts, completions, **kw):
    return [None if len(c) < 3 else float(len(c)) for c in completions]

NOT_A_FUNCTION = 3
'''


@pytest.fixture()
def user_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    return path


def test_file_function_with_weight_gets_the_extra_columns(user_file):
    spec = load_reward(f"0.5*{user_file}:correct")
    assert spec.weight == 0.5 and spec.name == f"0.5*{user_file}:correct"
    values = checked_values(spec.name, spec.fn, ["a", "b"], ["4", "5 "], {"answer": ["4", "6"]}, step=0)
    assert values == [1.0, 0.0]


def test_none_means_no_reward_for_that_sample(user_file):
    spec = load_reward(f"{user_file}:skip_short")
    assert checked_values(spec.name, spec.fn, ["p"] * 2, ["ab", "abcd"], {}, step=3) == [None, 4.0]


def test_module_function_spec():
    spec = load_reward("math:hypot")  # any importable module:function
    assert spec.fn(3, 4) == 5.0 and spec.weight == 1.0


@pytest.mark.parametrize("spec, message", [
    ("nowhere.py:fn", "file nowhere.py does not exist"),
    ("{file}:missing", "has no 'missing' \\(it defines: correct, skip_short\\)"),
    ("{file}:NOT_A_FUNCTION", "NOT_A_FUNCTION in .* is a int, not a function"),
    ("no_such_module_xyz:fn", "cannot import module no_such_module_xyz"),
    ("just_a_name", "expected file.py:function or module:function"),
    ("regex:", "regex needs a pattern"),
    ("regex:(", "bad regular expression"),
    ("length_penalty:ten", "expected length_penalty:TARGET"),
    ("", "empty spec"),
])
def test_bad_specs_name_the_spec_and_what_was_expected(user_file, spec, message):
    spec = spec.replace("{file}", str(user_file))
    with pytest.raises(RewardSpecError, match=message):
        load_reward(spec)


def test_a_file_that_raises_on_import_is_named(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('oops')\n")
    with pytest.raises(RewardSpecError, match="importing .*broken.py raised RuntimeError: oops"):
        load_reward(f"{bad}:fn")


def test_answer_match_compares_the_last_number():
    fn = load_reward("answer_match").fn
    comps = ["The answer is 7.", "7 or maybe 8", "no idea", "1,200"]
    assert fn(["q"] * 4, comps, answer=["7", "7", "7", "1200"]) == [1.0, 0.0, 0.0, 1.0]
    assert last_number("x = -3.5 then") == -3.5
    other = load_reward("answer_match:solution").fn
    assert other(["q"], ["12"], solution=[12]) == [1.0]
    with pytest.raises(KeyError, match="needs a column 'answer'"):
        fn(["q"], ["1"], solution=["1"])


def test_regex_and_length_penalty():
    assert load_reward(r"regex:^\d+$").fn(["q"] * 2, ["42", "forty two"]) == [1.0, 0.0]
    assert load_reward("2*length_penalty:3:0.5").fn(["q"] * 2, ["a b c", "a"]) == [-0.0, -1.0]
    assert load_reward("2*length_penalty:3:0.5").weight == 2.0
    assert load_reward("regex:a*b").fn(["q"], ["aab"]) == [1.0]  # a '*' that is not a weight


@pytest.mark.parametrize("out, message", [
    ([1.0], "returned 1 values at step 7 \\(expected 2"),
    ([1.0, math.nan], "returned nan for completion 1 at step 7"),
    ([1.0, "good"], "returned 'good' \\(str\\) for completion 1 at step 7"),
    (3.0, "returned a float at step 7"),
])
def test_unusable_outputs_stop_with_the_reward_and_step(out, message):
    with pytest.raises(RewardValueError, match=f"reward 'mine' {message}"):
        checked_values("mine", lambda p, c, **k: out, ["a", "b"], ["x", "y"], {}, step=7)


def test_a_reward_that_raises_is_named_with_the_step():
    def boom(prompts, completions, **kw):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(RewardValueError, match="reward 'boom' raised at step 2: ZeroDivisionError"):
        checked_values("boom", boom, ["a"], ["x"], {}, step=2)


def test_booleans_and_numpy_numbers_are_numbers():
    import numpy as np

    assert checked_values("b", lambda p, c, **k: [True, np.float32(0.5)], ["a", "b"], ["x", "y"], {}, 0) == [1.0, 0.5]


# -- specs as Scorer components ---------------------------------------------------------------------

import warnings  # noqa: E402

import torch  # noqa: E402

from rlxf.algorithms.loop import OptimConfig  # noqa: E402
from rlxf.algorithms.online.controller import (  # noqa: E402
    Context,
    KLSettings,
    NoSignalWarning,
    OnlineConfig,
    Reducer,
    SignalWatch,
    build_method,
    impute_missing,
    train_online,
)
from rlxf.core.runs import Run  # noqa: E402
from rlxf.policies.language import LanguagePolicy  # noqa: E402
from rlxf.policies.tiny import tiny_causal_lm, tiny_scorer, tiny_tokenizer  # noqa: E402
from rlxf.rewards.model import RewardModel  # noqa: E402
from rlxf.rewards.scoring import RewardError, Samples, Scorer  # noqa: E402
from rlxf.rewards.specs import reward_components, rewards_preference  # noqa: E402

WORDS = "a b c d e f user: assistant: 1 2 3 4".split()

SEEN_FILE = '''
SEEN = []

def record(prompts, completions, **columns):
    SEEN.append((prompts, completions, columns))
    return [float(len(str(c))) for c in completions]

def judge(prompts, a, b):
    return [0.75 if len(x) > len(y) else 0.25 for x, y in zip(a, b)]

def bad_judge(prompts, a, b):
    return [1.5] * len(a)
'''


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(WORDS)


@pytest.fixture()
def seen_file(tmp_path):
    path = tmp_path / "seen.py"
    path.write_text(SEEN_FILE)
    return path


def _samples_of(tok, responses, prompt_index, k=1):
    ids = [tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id] for r in responses]
    return Samples([[4]] * len(ids), ids, [True] * len(ids), k, prompt_index=prompt_index)


def test_text_reward_gets_prompt_text_columns_and_plain_completions(tok, seen_file):
    rows = [{"prompt": "a b", "answer": "1"}, {"prompt": "c", "answer": "2", "topic": "x"}]
    (name, (fn, w)), = reward_components([f"2*{seen_file}:record"], tok, rows, ["a b", "c"], False).items()
    assert w == 2.0
    values = fn(_samples_of(tok, ["d e", "f"], [1, 0]))
    assert values == [3.0, 1.0]  # "d e" and "f": decoded without the EOS special token
    module = next(m for m in __import__("sys").modules.values() if getattr(m, "__file__", None) == str(seen_file))
    prompts, completions, columns = module.SEEN[-1]
    assert prompts == ["c", "a b"] and completions == ["d e", "f"]
    assert columns == {"answer": ["2", "1"], "topic": ["x", None]}


def test_conversational_rewards_get_messages_like_trl(tok, seen_file):
    rows = [{"prompt": [{"role": "user", "content": "a"}], "answer": "1"}]
    fn = reward_components([f"{seen_file}:record"], tok, rows, ["user: a\nassistant:"], True)[f"{seen_file}:record"][0]
    fn(_samples_of(tok, ["b"], [0]))
    module = next(m for m in __import__("sys").modules.values() if getattr(m, "__file__", None) == str(seen_file))
    prompts, completions, _ = module.SEEN[-1]
    assert prompts == [[{"role": "user", "content": "a"}]]
    assert completions == [[{"role": "assistant", "content": "b"}]]
    answer = reward_components(["answer_match"], tok, rows, ["x"], True)["answer_match"][0]
    assert answer(_samples_of(tok, ["1", "2"], [0, 0])) == [1.0, 0.0]  # built-ins read chat completions too


BAD = '''
def boom(prompts, completions, **kw):
    raise KeyError("answer")

def short(prompts, completions, **kw):
    return [1.0]

def nan(prompts, completions, **kw):
    return [float("nan")] * len(completions)

def words(prompts, completions, **kw):
    return ["good"] * len(completions)

def none_for_b(prompts, completions, **kw):
    return [None if c == "b" else 1.0 for c in completions]
'''


@pytest.mark.parametrize("fn, message", [
    ("boom", "raised at step 0: KeyError"),
    ("short", "returned 1 values at step 0"),
    ("nan", "returned nan for completion 0 at step 0"),
    ("words", r"returned 'good' \(str\) for completion 0 at step 0"),
])
def test_a_bad_reward_stops_the_scorer_at_the_first_step_with_its_name(tmp_path, tok, fn, message):
    path = tmp_path / "bad.py"
    path.write_text(BAD)
    scorer = Scorer(reward_components([f"{path}:{fn}"], tok, [{"prompt": "a"}], ["a"], False))
    with pytest.raises(RewardError, match=f"reward '{path}:{fn}' {message}"):
        scorer(_samples_of(tok, ["b", "c"], [0, 0]), step=0)


def test_none_rewards_sum_over_the_rest_and_mark_unscored_samples(tmp_path, tok):
    path = tmp_path / "bad.py"
    path.write_text(BAD)
    comps = reward_components([f"{path}:none_for_b", "0.5*length_penalty:0:1"], tok, [{"prompt": "a"}], ["a"], False)
    scorer = Scorer(comps)
    total, parts = scorer(_samples_of(tok, ["b", "c d"], [0, 0], k=2), step=0)
    # "b": only the length penalty (-1 * 0.5); "c d": 1 + 0.5 * -2 (TRL's nansum)
    assert total.tolist() == [-0.5, 0.0]
    assert scorer.valid(parts, 2).tolist() == [True, True]
    only = Scorer({k: v for k, v in comps.items() if "none_for_b" in k})
    total, parts = only(_samples_of(tok, ["b", "c d"], [0, 0], k=2), step=0)
    assert only.valid(parts, 2).tolist() == [False, True] and math.isnan(parts[f"{path}:none_for_b"][0])


def test_impute_missing_uses_the_group_mean_of_scored_samples():
    scores = torch.tensor([1.0, 0.0, 3.0, 0.0, 0.0, 0.0])
    valid = torch.tensor([True, False, True, False, False, False])
    assert impute_missing(scores, valid, 3).tolist() == [1.0, 2.0, 3.0, 0.0, 0.0, 0.0]


def test_reward_model_directories_score_with_their_own_tokenizer(tmp_path, tok):
    rm = RewardModel(tiny_scorer(tok, n_layer=1, n_embd=16, n_head=2, seed=1), tok)
    rm.save_pretrained(tmp_path / "rm")
    prompts_text = ["a b", "c"]
    comps = reward_components([str(tmp_path / "rm")], tok, [{"prompt": p} for p in prompts_text], prompts_text, False)
    samples = _samples_of(tok, ["d", "e f"], [1, 0])
    got = torch.as_tensor(comps[str(tmp_path / "rm")][0](samples))
    assert torch.allclose(got, rm.score_texts(["c", "a b"], ["d", "e f"]))
    # the same directory as a Bradley-Terry judge
    (pref, _w), = reward_components([f"judge:{tmp_path / 'rm'}"], tok, [{"prompt": p} for p in prompts_text],
                                    prompts_text, False, judge=True).values()
    p = pref(samples, torch.tensor([0, 1]), torch.tensor([1, 0]))
    assert torch.allclose(p, torch.sigmoid(torch.stack([got[0] - got[1], got[1] - got[0]])))
    lm = tmp_path / "lm"
    LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=16, n_head=2), tok).save_pretrained(lm)
    with pytest.raises(RewardSpecError, match="expected a reward model: a sequence-classification model with one label"):
        reward_components([str(lm)], tok, [], [], False)


def test_judge_file_gives_preferences_and_is_checked(tok, seen_file):
    rows = [{"prompt": "a"}]
    (pref, _), = reward_components([f"judge:{seen_file}:judge"], tok, rows, ["a"], False, judge=True).values()
    s = _samples_of(tok, ["b c", "d"], [0, 0], k=2)
    assert pref(s, torch.tensor([0, 1]), torch.tensor([1, 0])).tolist() == [0.75, 0.25]
    (bad, _), = reward_components([f"judge:{seen_file}:bad_judge"], tok, rows, ["a"], False, judge=True).values()
    s.step = 4
    with pytest.raises(RewardValueError, match=r"judge 'judge:.*bad_judge' returned 1.5 for pair 0 at step 4 "
                                               r"\(expected P\(a is better\), a number in \[0, 1\]\)"):
        bad(s, torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(RewardSpecError, match="expected a judge"):
        reward_components([f"{seen_file}:judge"], tok, rows, ["a"], False, judge=True)
    with pytest.raises(RewardSpecError, match="expected a reward, not a judge"):
        reward_components([f"judge:{seen_file}:judge"], tok, rows, ["a"], False)


def test_rewards_preference_is_bradley_terry_on_the_summed_reward(tmp_path, tok):
    path = tmp_path / "bad.py"
    path.write_text(BAD)
    comps = reward_components([f"{path}:none_for_b", "length_penalty:0:1"], tok, [{"prompt": "a"}], ["a"], False)
    pref = rewards_preference(comps, beta=2.0)
    s = _samples_of(tok, ["b", "c d e"], [0, 0], k=2)  # summed rewards: "b" -1 (None, -1); "c d e" 1 - 3 = -2
    p = pref(s, torch.tensor([0]), torch.tensor([1]))
    assert p.item() == pytest.approx(torch.sigmoid(torch.tensor(2.0 * (-1 - -2))).item())


# -- the controller: unscored samples leave the loss; no learning signal warns ----------------------


@pytest.fixture(scope="module")
def policy(tok):
    return LanguagePolicy(tiny_causal_lm(tok, n_layer=1, n_embd=32, n_head=2, seed=0), tok)


def _online(steps, reduction=""):
    return OnlineConfig(method="rloo", samples_per_prompt=2, max_new_tokens=5, loss_reduction=reduction,
                        kl=KLSettings(coef=0.05),
                        optim=OptimConfig(steps=steps, batch_size=4, lr=1e-3, checkpoint_every=100))


@pytest.mark.parametrize("reduction", ["", "token"])
def test_unscored_samples_are_left_out_of_the_loss(tmp_path, policy, reduction):
    """The logged loss of a rollout where prompt 0's samples got no reward equals the method's
    loss on the same rollout with those groups removed."""
    a = policy.tokenizer.convert_tokens_to_ids("a")
    reward = lambda s: [None if i == 0 else float(r.count(a)) for i, r in zip(s.prompt_index, s.response_ids)]  # noqa: E731
    cfg, seen, pol = _online(1, reduction), [], policy.copy()
    run = Run(tmp_path / reduction, "cfg")
    train_online(run, "online", pol, pol.reference(), pol.encode(["a b", "c d", "e f"]),
                 Scorer({"r": (reward, 1.0)}), cfg, seed=3, quiet=True, on_rollout=seen.append)
    batch = seen[0]
    groups = sorted({g for g in range(4) if batch.samples.prompt_index[2 * g] != 0})
    assert 0 < len(groups) < 4  # the seed draws prompt 0 for some groups but not all
    assert batch.stats["no_reward"] == pytest.approx(1 - len(groups) / 4)
    rows = batch.rows(groups)
    sub = type(batch)(Samples([batch.samples.prompt_ids[i] for i in rows], [batch.samples.response_ids[i] for i in rows],
                              [True] * len(rows), 2), batch.steps[rows], batch.scores[rows], {},
                      batch.token_rewards[rows], {}, {"adv": batch.extra["adv"][rows]})
    method = build_method(cfg)
    mask = sub.steps.mask
    reducer = Reducer(reduction or method.reduction, len(rows), float(mask.sum()), cfg.max_new_tokens)
    ref = policy.copy()  # the weights the logged loss was computed with (before the step)
    ctx = Context(cfg, ref, ref, 0.05, reduction or method.reduction)
    with torch.no_grad():
        loss, _, _ = method.loss(sub, list(range(len(groups))), reducer, ctx)
    assert run.metrics("online")[0]["loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_signal_watch_warns_once_per_flat_stretch_of_ten_rollouts():
    watch = SignalWatch(["my_reward"])
    flat, varied = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 0.0, 0.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(25):  # flat at 0-11, signal at 12, flat again at 13-24
            watch.update(varied if step == 12 else flat, 2, step)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "at step 9" in messages[0] and "at step 22" in messages[1]
    assert "10 rollouts in a row (reward my_reward: 0, 1)" in messages[0]
    quiet = SignalWatch(["r"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(12):  # one sample per prompt: groups cannot differ, so no warning
            quiet.update(flat, 1, step)


def test_the_controller_warns_when_rewards_carry_no_signal(tmp_path, policy, monkeypatch):
    """With the patience set to 3: flat rewards at rollouts 0-2 (warn at step 2), a signal at 3, flat
    again at 4-6 (warn at step 6)."""
    import rlxf.algorithms.online.controller as controller

    monkeypatch.setattr(controller, "NO_SIGNAL_ROLLOUTS", 3)
    flat = lambda s: [0.0 if s.step != 3 else float(j % 2) for j in range(len(s))]  # noqa: E731
    cfg = _online(7)
    cfg.max_new_tokens, cfg.optim.batch_size = 2, 2
    with pytest.warns(NoSignalWarning) as caught:
        train_online(Run(tmp_path / "flat", "cfg"), "online", policy.copy(), policy.reference(),
                     policy.encode(["a b", "c d"]), Scorer({"my_reward": (flat, 1.0)}), cfg, seed=0, quiet=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, NoSignalWarning)]
    assert len(messages) == 2 and "at step 2" in messages[0] and "at step 6" in messages[1]
    assert all("3 rollouts in a row (reward my_reward: 0)" in m for m in messages)


def test_online_dpo_never_pairs_an_unscored_sample():
    """Group 0: the highest score belongs to a sample no reward scored (zero mask), so the pair is
    the best and worst of the others; group 1 keeps one scored sample only, so it gets no pair."""
    from rlxf.algorithms.online.controller import Batch
    from rlxf.algorithms.online.online_dpo import OnlineDPO
    from rlxf.core.steps import Steps

    mask = torch.ones(6, 2)
    mask[[0, 4, 5]] = 0
    steps = Steps(logps=torch.zeros(6, 2), mask=mask, old_logps=torch.zeros(6, 2), ref_logps=torch.zeros(6, 2))
    batch = Batch(Samples([[1]] * 6, [[2, 3]] * 6, [True] * 6, 3), steps,
                  torch.tensor([9.0, 1.0, 3.0, 0.0, 5.0, 7.0]), {}, torch.zeros(6, 2), {})
    OnlineDPO().prepare(batch, None)
    assert batch.extra["pairs"] == {0: (2, 1, 1.0)}
