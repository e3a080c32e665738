"""Synthetic websites: small page graphs with links and forms, described in text, and a text environment
in which an agent follows an instruction ("go to checkout, enter name ann city rome, submit").

The types (all frozen; build them in code or from a dict with :meth:`Site.from_dict`):

- :class:`Form`: ``fields``, a mapping field -> the values it accepts (its vocabulary, in order);
- :class:`Page`: ``name``, ``links`` (names of the pages it links to) and an optional ``form``;
- :class:`Site`: ``name``, ``pages`` (name -> Page) and the ``start`` page. ``site.path(a, b)`` is a
  shortest link path, ``site.form_pages()`` the pages with a form, ``site.describe()`` the site as text
  (the context a task proposer reads), ``site.random_task(rng)`` a uniformly drawn task;
- :class:`WebTask`: a target ``page`` and ``values`` (field -> value, in the form's field order).
  ``task.instruction()`` is its text (``go to checkout enter name ann city rome then submit``) and
  :func:`parse_task` reads such a text back against a site (None when it names nothing on the site).

The environment, :class:`WebEnv` (``make_env("web", site="shop")``):

- actions: ``click PAGE`` (follow a link of the current page), ``type FIELD VALUE`` (a field of the
  current page's form, a value from its vocabulary), ``submit`` (the current page's form). Anything else,
  including a link the page lacks, is invalid (the base class's penalised event);
- the first observation is ``task: <instruction>`` followed by the page; every later one the page alone:
  ``page checkout links home cart form name ann city -`` (``-`` = empty field);
- reward 0 per move; ``submit`` ends the episode with +1 when it is the task's page and the form holds
  exactly the task's values (other fields empty), else -1 (QWeb's sparse reward). The final observation
  names what was submitted (``submitted checkout name ann city -``), so a judge can read the outcome;
- typed values persist on their page while the agent navigates; ``env.state()`` gives the structured
  state (page, every form's values, the task) that value-based learners (:mod:`rlxf.agents.qweb`) encode;
- the expert walks a shortest path, types each field that differs from the task (task order; clears a
  field holding a value the task leaves empty by typing ``-``), then submits: ``len(path) - 1 + fields + 1``
  turns, all with reward 0 but the last (+1).

Tasks per episode: ``WebEnv(site, task=t)`` always plays ``t`` (a PAE proposal); ``WebEnv(site,
tasks=[...])`` plays ``tasks[seed % len(tasks)]``; with neither, each reset draws ``site.random_task``
from the episode seed. Built-in sites: :data:`SITES` (``shop``, ``travel``, ``bank``) and
:func:`form_site` (one large form behind a hub with distractor links, the QWeb-style "book a flight"
page of ``k`` fields and ``V`` values each).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from rlxf.agents.env import TextEnv

EMPTY = "-"
KEYWORDS = ["task:", "go", "to", "enter", "then", "submit", "page", "links", "form", "none", "click", "type",
            "submitted", "invalid", "action:", EMPTY]


@dataclass(frozen=True)
class Form:
    """A form: ``fields`` maps each field name to the values it accepts."""

    fields: dict[str, tuple[str, ...]]

    def __post_init__(self):
        if not self.fields:
            raise ValueError("a form needs at least one field")
        for name, values in self.fields.items():
            if not values or EMPTY in values or any(" " in v for v in values) or " " in name:
                raise ValueError(f"form field {name!r}: expected a non-empty list of one-word values, none "
                                 f"equal to {EMPTY!r}; got {list(values)}")


@dataclass(frozen=True)
class Page:
    name: str
    links: tuple[str, ...] = ()
    form: Form | None = None


@dataclass(frozen=True)
class WebTask:
    """Fill ``values`` (field -> value) into the form on ``page`` and submit it."""

    page: str
    values: tuple[tuple[str, str], ...]

    def instruction(self) -> str:
        pairs = " ".join(f"{f} {v}" for f, v in self.values)
        return f"go to {self.page} enter {pairs} then submit"


@dataclass(frozen=True)
class Site:
    """Pages joined by links; every link must name a page of the site."""

    name: str
    pages: dict[str, Page]
    start: str

    def __post_init__(self):
        if self.start not in self.pages:
            raise ValueError(f"site {self.name!r}: start page {self.start!r} is not one of its pages")
        for key, page in self.pages.items():
            if key != page.name or " " in key:
                raise ValueError(f"site {self.name!r}: page {key!r} must be one word and keyed by its own name")
            for link in page.links:
                if link not in self.pages:
                    raise ValueError(f"site {self.name!r}: page {key!r} links to unknown page {link!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "Site":
        """``{"name": .., "start": .., "pages": {name: {"links": [..], "form": {field: [values]}}}}``."""
        try:
            pages = {name: Page(name, tuple(p.get("links", ())),
                                Form({f: tuple(v) for f, v in p["form"].items()}) if p.get("form") else None)
                     for name, p in d["pages"].items()}
            return cls(d["name"], pages, d["start"])
        except KeyError as e:
            raise ValueError(f"site dict: missing key {e}; expected name, start and pages") from None

    def form_pages(self) -> list[str]:
        return [n for n, p in self.pages.items() if p.form is not None]

    def path(self, src: str, dst: str) -> list[str] | None:
        """A shortest list of pages from ``src`` to ``dst`` (both included) following links; None if unreachable."""
        prev: dict[str, str | None] = {src: None}
        queue = deque([src])
        while queue:
            cur = queue.popleft()
            if cur == dst:
                out = [cur]
                while prev[out[-1]] is not None:
                    out.append(prev[out[-1]])
                return out[::-1]
            for nxt in self.pages[cur].links:
                if nxt not in prev:
                    prev[nxt] = cur
                    queue.append(nxt)
        return None

    def describe(self) -> str:
        """The site as text: each page, its links, and its form's fields with their values."""
        lines = [f"site {self.name} start {self.start}"]
        for p in self.pages.values():
            line = f"page {p.name} links {' '.join(p.links) or 'none'}"
            if p.form:
                line += " form " + " ; ".join(f"{f} {' '.join(v)}" for f, v in p.form.fields.items())
            lines.append(line)
        return "\n".join(lines)

    def random_task(self, rng: random.Random, n_fields: int | None = None) -> WebTask:
        """A reachable form page and values for ``n_fields`` of its fields (all when None), drawn uniformly."""
        pages = [n for n in self.form_pages() if self.path(self.start, n) is not None]
        if not pages:
            raise ValueError(f"site {self.name!r}: no form page is reachable from {self.start!r}")
        page = rng.choice(pages)
        fields = list(self.pages[page].form.fields.items())
        k = len(fields) if n_fields is None else min(n_fields, len(fields))
        chosen = sorted(rng.sample(range(len(fields)), k))
        return WebTask(page, tuple((fields[i][0], rng.choice(fields[i][1])) for i in chosen))

    def words(self) -> list[str]:
        out = [self.name]
        for p in self.pages.values():
            out.append(p.name)
            if p.form:
                for f, vals in p.form.fields.items():
                    out.append(f)
                    out.extend(vals)
        return list(dict.fromkeys(out))


def parse_task(site: Site, text: str) -> WebTask | None:
    """The task an instruction text names on ``site`` (the format of :meth:`WebTask.instruction`), or None
    when it is malformed or names a page, field or value the site lacks."""
    w = text.strip().split()
    if len(w) < 6 or w[:2] != ["go", "to"] or w[3] != "enter" or w[-2:] != ["then", "submit"]:
        return None
    page = site.pages.get(w[2])
    pairs = w[4:-2]
    if page is None or page.form is None or not pairs or len(pairs) % 2:
        return None
    values = dict(zip(pairs[::2], pairs[1::2]))
    if len(values) != len(pairs) // 2 or any(v not in page.form.fields.get(f, ()) for f, v in values.items()):
        return None
    return WebTask(page.name, tuple((f, values[f]) for f in page.form.fields if f in values))


class WebEnv(TextEnv):
    """Follow an instruction on a synthetic website (see the module docstring)."""

    name = "web"

    def __init__(self, site: Site, task: WebTask | None = None, tasks: list[WebTask] | None = None,
                 max_turns: int = 12, invalid_penalty: float = -0.1):
        super().__init__(max_turns, invalid_penalty)
        for t in ([task] if task else []) + list(tasks or []):
            if parse_task(site, t.instruction()) != t:
                raise ValueError(f"web: task {t.instruction()!r} does not fit site {site.name!r}")
        if tasks is not None and not tasks:
            raise ValueError("web: tasks must be a non-empty list (or None to draw tasks at random)")
        self.site, self.fixed_task, self.tasks = site, task, tasks
        self.task: WebTask | None = None
        self.page = site.start
        self.filled: dict[str, dict[str, str]] = {}
        self.submitted: tuple[str, dict[str, str]] | None = None

    # -- state ---------------------------------------------------------------------------------
    def _form_values(self, page: str) -> dict[str, str]:
        form = self.site.pages[page].form
        return {f: self.filled.get(page, {}).get(f, EMPTY) for f in form.fields} if form else {}

    def state(self) -> dict:
        """The structured state: current page, every form's values (EMPTY when blank) and the task."""
        return {"page": self.page, "forms": {p: self._form_values(p) for p in self.site.form_pages()},
                "task": self.task}

    def goal_form(self) -> dict[str, str]:
        """The values the task's form must hold on submit."""
        want = dict(self.task.values)
        return {f: want.get(f, EMPTY) for f in self.site.pages[self.task.page].form.fields}

    def matching_fields(self) -> int:
        """How many fields of the task's form already hold their goal value (QWeb's shaping potential)."""
        have = self._form_values(self.task.page)
        return sum(have[f] == v for f, v in self.goal_form().items())

    def observe(self) -> str:
        p = self.site.pages[self.page]
        text = f"page {p.name} links {' '.join(p.links) or 'none'}"
        if p.form:
            text += " form " + " ".join(f"{f} {v}" for f, v in self._form_values(p.name).items())
        return text

    def legal_actions(self) -> list[str]:
        p = self.site.pages[self.page]
        out = [f"click {link}" for link in p.links]
        if p.form:
            out += [f"type {f} {v}" for f, vals in p.form.fields.items() for v in (EMPTY,) + vals]
            out.append("submit")
        return out

    # -- TextEnv hooks -------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> str:
        self._seed = seed
        return super().reset(seed)

    def _reset(self) -> str:
        if self.fixed_task is not None:
            self.task = self.fixed_task
        elif self.tasks is not None:
            self.task = self.tasks[(self._seed or 0) % len(self.tasks)]
        else:
            self.task = self.site.random_task(self.rng)
        self.page, self.filled, self.submitted = self.site.start, {}, None
        return f"task: {self.task.instruction()} {self.observe()}"

    def parse(self, action: str):
        w = action.strip().split()
        p = self.site.pages[self.page]
        if len(w) == 2 and w[0] == "click" and w[1] in p.links:
            return ("click", w[1])
        if len(w) == 3 and w[0] == "type" and p.form and w[2] in (EMPTY,) + p.form.fields.get(w[1], ()):
            return ("type", w[1], w[2])
        if w == ["submit"] and p.form:
            return ("submit",)
        return None

    def _step(self, move):
        if move[0] == "click":
            self.page = move[1]
            return self.observe(), 0.0, False, {}
        if move[0] == "type":
            self.filled.setdefault(self.page, {})[move[1]] = move[2]
            return self.observe(), 0.0, False, {}
        values = self._form_values(self.page)
        self.submitted = (self.page, values)
        ok = self.success()
        text = f"submitted {self.page} " + " ".join(f"{f} {v}" for f, v in values.items())
        return text, 1.0 if ok else -1.0, True, {"submitted": self.submitted}

    def success(self) -> bool:
        return (self.submitted is not None and self.submitted[0] == self.task.page
                and self.submitted[1] == self.goal_form())

    def expert_action(self) -> str:
        if self.page != self.task.page:
            return f"click {self.site.path(self.page, self.task.page)[1]}"
        have = self._form_values(self.page)
        for f, v in self.goal_form().items():
            if have[f] != v:
                return f"type {f} {v}"
        return "submit"

    def random_action(self, rng: random.Random) -> str:
        return rng.choice(self.legal_actions())

    def words(self) -> list[str]:
        return list(dict.fromkeys(KEYWORDS + self.site.words()))


def _form(**fields: str) -> Form:
    return Form({f: tuple(v.split()) for f, v in fields.items()})


SITES: dict[str, Site] = {
    "shop": Site("shop", {
        "home": Page("home", ("catalog", "account", "help")),
        "catalog": Page("catalog", ("home", "cart"), _form(item="lamp chair desk", qty="1 2 3")),
        "cart": Page("cart", ("catalog", "checkout")),
        "checkout": Page("checkout", ("cart", "home"), _form(name="ann bob eve", city="rome oslo lima")),
        "account": Page("account", ("home",), _form(email="ann@x bob@x", plan="free pro")),
        "help": Page("help", ("home", "contact")),
        "contact": Page("contact", ("help",), _form(topic="refund delivery", name="ann bob eve")),
    }, "home"),
    "travel": Site("travel", {
        "home": Page("home", ("flights", "hotels", "deals")),
        "flights": Page("flights", ("home",), _form(origin="rome oslo lima", dest="rome oslo lima",
                                                     day="mon fri sun")),
        "hotels": Page("hotels", ("home", "deals"), _form(city="rome oslo lima", nights="1 2 3")),
        "deals": Page("deals", ("home", "cars")),
        "cars": Page("cars", ("deals",), _form(city="rome oslo lima", days="1 2 3")),
    }, "home"),
    "bank": Site("bank", {
        "home": Page("home", ("accounts", "support")),
        "accounts": Page("accounts", ("home", "transfer", "cards")),
        "transfer": Page("transfer", ("accounts",), _form(to="ann bob eve", amount="10 50 100")),
        "cards": Page("cards", ("accounts",), _form(card="debit credit", action="block renew")),
        "support": Page("support", ("home",), _form(topic="card loan login")),
    }, "home"),
}
"""Built-in sites by name."""


def form_site(n_fields: int = 5, n_values: int = 4, n_distractors: int = 20) -> Site:
    """One large form (``book``, fields ``f0..``, values ``v0..`` each) one link from the ``home`` hub,
    which also links to ``n_distractors`` dead-end pages (each links back home): the QWeb-style hard form."""
    if min(n_fields, n_values) < 1 or n_distractors < 0:
        raise ValueError(f"form_site: need n_fields, n_values >= 1 and n_distractors >= 0; got "
                         f"{n_fields}, {n_values}, {n_distractors}")
    values = tuple(f"v{i}" for i in range(n_values))
    pages = {"home": Page("home", ("book",) + tuple(f"d{i}" for i in range(n_distractors))),
             "book": Page("book", ("home",), Form({f"f{i}": values for i in range(n_fields)}))}
    pages.update({f"d{i}": Page(f"d{i}", ("home",)) for i in range(n_distractors)})
    return Site(f"form{n_fields}x{n_values}", pages, "home")


def make(site: str = "shop", max_turns: int = 12, n_fields: int = 5, n_values: int = 4,
         n_distractors: int = 20) -> WebEnv:
    """``site``: a name in :data:`SITES`, or ``form`` for :func:`form_site` with the given sizes."""
    if site == "form":
        return WebEnv(form_site(n_fields, n_values, n_distractors), max_turns=max_turns)
    if site not in SITES:
        raise ValueError(f"web: unknown site {site!r}; expected one of {', '.join(sorted(SITES))} or 'form'")
    return WebEnv(SITES[site], max_turns=max_turns)
