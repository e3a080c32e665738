"""Synthetic websites: page-graph rules, task text round trips, invalid actions, truncation, and the expert
reaching the optimum (shortest path + exact form, reward +1) on every site."""

from __future__ import annotations

import random

import pytest

from rlxf.agents.env import make_env
from rlxf.agents.episodes import run_episodes, scripted_dataset, skill_actor, success_rate
from rlxf.agents.tasks.web import SITES, Form, Page, Site, WebEnv, WebTask, form_site, parse_task


def test_site_validation_names_the_bad_page_link_or_field():
    with pytest.raises(ValueError, match="'home' links to unknown page 'nowhere'"):
        Site("s", {"home": Page("home", ("nowhere",))}, "home")
    with pytest.raises(ValueError, match="start page 'x'"):
        Site("s", {"home": Page("home")}, "x")
    with pytest.raises(ValueError, match="form field 'f'"):
        Form({"f": ()})
    with pytest.raises(ValueError, match="missing key 'start'"):
        Site.from_dict({"name": "s", "pages": {}})
    site = Site.from_dict({"name": "s", "start": "a", "pages": {"a": {"links": ["b"]}, "b": {"form": {"x": ["1"]}}}})
    assert site.form_pages() == ["b"] and site.path("a", "b") == ["a", "b"] and site.path("b", "a") is None


def test_shortest_path_and_description():
    shop = SITES["shop"]
    assert shop.path("home", "checkout") == ["home", "catalog", "cart", "checkout"]
    assert shop.path("contact", "account") == ["contact", "help", "home", "account"]
    text = shop.describe()
    assert "page checkout links cart home form name ann bob eve ; city rome oslo lima" in text


def test_instruction_text_round_trips_and_bad_text_gives_none():
    site = SITES["travel"]
    rng = random.Random(0)
    for _ in range(50):
        task = site.random_task(rng, n_fields=rng.randint(1, 3))
        assert parse_task(site, task.instruction()) == task
    assert parse_task(site, "go to flights enter origin rome then submit") == WebTask("flights", (("origin", "rome"),))
    # field order in the text does not matter; the task keeps the form's order
    assert parse_task(site, "go to hotels enter nights 2 city oslo then submit").values == (("city", "oslo"), ("nights", "2"))
    for bad in ["", "go to mars enter city rome then submit", "go to hotels enter city paris then submit",
                "go to hotels enter city then submit", "go to deals enter city rome then submit",
                "go to hotels enter city rome city oslo then submit", "hotels city rome"]:
        assert parse_task(site, bad) is None, bad


def test_rules_rewards_and_invalid_actions():
    task = WebTask("checkout", (("name", "bob"), ("city", "lima")))
    env = WebEnv(SITES["shop"], task=task, max_turns=20)
    obs = env.reset(0)
    assert obs == "task: go to checkout enter name bob city lima then submit page home links catalog account help"
    for bad in ["click cart", "type name bob", "submit", "fly", "click"]:  # cart is not linked from home
        o, r, term, trunc, info = env.step(bad)
        assert info["invalid"] and r == -0.1 and not term and "invalid action" in o
    for a in ["click catalog", "click cart", "click checkout"]:
        o, r, term, _, info = env.step(a)
        assert r == 0.0 and not term and not info["invalid"]
    assert o == "page checkout links cart home form name - city -"
    env.step("type name bob")
    assert env.matching_fields() == 1
    env.step("type city rome")
    env.step("click cart"), env.step("click checkout")  # typed values persist across navigation
    assert env.observe() == "page checkout links cart home form name bob city rome"
    o, r, term, _, _ = env.step("submit")
    assert term and r == -1.0 and not env.success() and o == "submitted checkout name bob city rome"


def test_extra_fields_must_be_empty_and_can_be_cleared():
    task = WebTask("hotels", (("city", "oslo"),))
    env = WebEnv(SITES["travel"], task=task)
    env.reset(0)
    for a in ["click hotels", "type city oslo", "type nights 2"]:
        env.step(a)
    assert env.matching_fields() == 1 and env.expert_action() == "type nights -"
    env.step(env.expert_action())
    o, r, term, _, _ = env.step("submit")
    assert term and r == 1.0 and env.success()


def test_turn_limit_truncates():
    env = WebEnv(SITES["shop"], task=WebTask("checkout", (("name", "ann"),)), max_turns=3)
    env.reset(0)
    env.step("click catalog"), env.step("click cart")
    _, _, term, trunc, _ = env.step("click checkout")
    assert trunc and not term and not env.success()


@pytest.mark.parametrize("name", sorted(SITES) + ["form"])
def test_expert_is_optimal_on_every_site(name):
    """The expert submits the exact form after the shortest path: return +1 in path + fields + 1 turns."""
    make = lambda: make_env("web", site=name, max_turns=40, n_fields=5, n_values=4, n_distractors=20)
    eps = run_episodes(make, skill_actor(1.0), list(range(40)))
    env = make()
    for ep in eps:
        env.reset(ep.seed)
        path = env.site.path(env.site.start, env.task.page)
        assert ep.success and ep.ret == 1.0 and ep.rewards[-1] == 1.0
        assert len(ep) == len(path) - 1 + len(env.task.values) + 1


def test_random_actions_are_legal_and_datasets_are_mixed():
    make = lambda: WebEnv(SITES["shop"], max_turns=12)
    data = scripted_dataset(make, {"expert": 1.0, "noisy": 0.5, "random": 0.0}, 30, seed=1)
    assert not any(any(ep.invalid) for ep in data)  # random actions are drawn from the legal ones
    rates = {p: success_rate([e for e in data if e.policy == p])[0] for p in ("expert", "noisy", "random")}
    assert rates["expert"] == 1.0 > rates["noisy"] > rates["random"]


def test_task_list_is_indexed_by_seed_and_foreign_tasks_are_refused():
    tasks = [WebTask("transfer", (("to", "ann"),)), WebTask("support", (("topic", "loan"),))]
    env = WebEnv(SITES["bank"], tasks=tasks)
    assert [(env.reset(s), env.task)[1] for s in (0, 1, 2)] == [tasks[0], tasks[1], tasks[0]]
    with pytest.raises(ValueError, match="does not fit site 'bank'"):
        WebEnv(SITES["bank"], task=WebTask("checkout", (("name", "ann"),)))
    with pytest.raises(ValueError, match="unknown site 'mall'"):
        make_env("web", site="mall")
    site = form_site(2, 3, 4)
    assert len(site.pages) == 6 and site.pages["book"].form.fields["f1"] == ("v0", "v1", "v2")


def test_words_cover_every_observation_and_action():
    vocab = set(WebEnv(SITES["shop"]).words())
    for ep in run_episodes(lambda: WebEnv(SITES["shop"], max_turns=12), skill_actor(0.5), list(range(20))):
        for text in ep.observations + ep.actions:
            assert set(text.split()) <= vocab, text
