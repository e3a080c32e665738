"""End to end in real headless Chromium (Debian's chromium + chromium-driver, via Selenium):
a labeler answers with the keyboard and the mouse, and marks a critique's first wrong step;
the labels reach the database and the export; hostile item text shows as text; a labeler
answers APOHF's prompt duels and their favourite prompt is reported; screenshots land in
build/screenshots/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from rlxf.app.client import serve_in_background
from rlxf.app.project import export_project, init_project, open_project
from rlxf.app.server import create_app
from rlxf.data.io import read_records

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
SHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"
PAYLOAD = '<img src=x onerror="window.__pwned=1">'

if not (CHROMIUM and DRIVER):
    pytest.skip("Chromium or chromedriver not installed (apt-get install chromium chromium-driver); "
                "browser test skipped", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed; browser test skipped")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a browser or driver
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,760", "--hide-scrollbars"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver, predicate, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: predicate(d))


def _screen(driver):
    """(assignment id, prompt, response texts) on screen now, read in one step (no stale elements)."""
    return tuple(driver.execute_script(
        "const t = document.getElementById('task');"
        "return [t.dataset.assignment || null, document.getElementById('prompt').textContent,"
        " [...document.querySelectorAll('#responses .text')].map((e) => e.textContent)];"))


def test_label_in_chromium_with_keyboard_and_mouse(tmp_path, browser):
    from selenium.webdriver.common.by import By

    directory = tmp_path / "proj"
    owner = init_project(directory, "preference")
    store, project = open_project(directory)
    store.add_items(project, [
        ("Describe the sea in a few words.", ["Grey, wide and restless under a low sky.", "It is water."], {}),
        ("Name a colour <b>bold</b>.", [PAYLOAD, "Blue."], {}),
        ("Say hello.", ["Hello!", "Hi there, nice to meet you."], {}),
    ])
    token = store.add_labeler(project, "ann")
    with serve_in_background(create_app(store, project)) as url:
        browser.get(f"{url}/label#token={token}")
        _wait(browser, lambda d: d.find_element(By.ID, "task").is_displayed())
        assert "token" not in browser.current_url  # the token left the address bar
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / "labeling_page.png"))
        shown = []
        actions = [("key", "1"), ("click", "B is better"), ("key", "t")]
        for how, what in actions:
            before = _screen(browser)
            shown.append(before)
            if how == "key":
                browser.find_element(By.TAG_NAME, "body").send_keys(what)
            else:
                browser.find_element(By.XPATH, f"//button[starts-with(normalize-space(.), '{what}')]").click()
            _wait(browser, lambda d: not d.find_element(By.ID, "task").is_displayed() or _screen(d)[0] != before[0])
        _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed())
        assert browser.execute_script("return window.__pwned") is None  # the payload never ran
        assert any(PAYLOAD in texts for _, _, texts in shown)  # ... and was shown as literal text
        assert any(p == "Name a colour <b>bold</b>." for _, p, _ in shown)
        assert "3 labeled" in browser.find_element(By.ID, "who").text

        browser.get(f"{url}/project#token={owner}")
        _wait(browser, lambda d: d.find_element(By.ID, "progress").text == "3 / 3")
        browser.save_screenshot(str(SHOTS / "project_page.png"))

    labels = store.labels(project)
    assert [l.value["choice"] for l in labels] == ["a", "b", "tie"]
    by_assignment = {int(a): (p, texts) for a, p, texts in shown}
    store.close()
    out, n = export_project(directory, tmp_path / "labels.jsonl")
    records = read_records(out)
    assert n == 2 and len(records) == 2  # the tie is not a comparison
    (p0, t0), (p1, t1) = [by_assignment[a] for a in sorted(by_assignment)[:2]]
    assert (records[0].prompt, records[0].chosen, records[0].rejected) == (p0, t0[0], t0[1])  # key 1: A wins
    assert (records[1].prompt, records[1].chosen, records[1].rejected) == (p1, t1[1], t1[0])  # click: B wins
    assert (SHOTS / "labeling_page.png").stat().st_size > 5000
    print(f"\nscreenshots: {SHOTS / 'labeling_page.png'}, {SHOTS / 'project_page.png'}")


def test_ratings_and_critiques_by_keyboard_alone(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    store_dirs = {}
    for kind in ("rating", "critique"):
        directory = tmp_path / kind
        init_project(directory, kind)
        store, project = open_project(directory)
        store.add_items(project, [("Describe snow.", ["Cold.", "White and soft.", "Snow snow snow."], {})])
        store_dirs[kind] = (store, project, store.add_labeler(project, "ann"))

    store, project, token = store_dirs["rating"]
    with serve_in_background(create_app(store, project)) as url:
        browser.get(f"{url}/label#token={token}")
        _wait(browser, lambda d: d.find_element(By.ID, "task").is_displayed())
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("4", "2", Keys.ARROW_UP, Keys.ARROW_UP, "1", Keys.ARROW_DOWN, "5", Keys.ENTER)
        _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed())
    (label,) = store.labels(project)
    assert label.value == {"ratings": [1.0, 2.0, 5.0]}  # 4 was overwritten by 1 after moving back up
    store.close()

    store, project, token = store_dirs["critique"]
    with serve_in_background(create_app(store, project)) as url:
        browser.get(f"{url}/label#token={token}")
        _wait(browser, lambda d: d.find_element(By.ID, "critique").is_displayed())
        active = browser.switch_to.active_element
        assert active.get_attribute("id") == "critique"  # focus starts in the critique box
        active.send_keys(f"Too short. {PAYLOAD}", Keys.TAB, "Cold, white and quiet.")
        browser.switch_to.active_element.send_keys(Keys.CONTROL, Keys.ENTER)
        _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed())
    (label,) = store.labels(project)
    assert label.value == {"critique": f"Too short. {PAYLOAD}", "corrected": "Cold, white and quiet."}
    assert browser.execute_script("return window.__pwned") is None
    store.close()


def test_marking_the_first_wrong_step_reaches_the_export(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    directory = tmp_path / "steps"
    init_project(directory, "critique")
    store, project = open_project(directory)
    wrong = "3*4=12\n2+12=15\nanswer: 15"
    store.add_items(project, [("2+3*4=", [wrong, wrong], {}),
                              ("1+1=", ["ok", "ok"], {"steps": [[PAYLOAD, "answer: 2"]] * 2})])
    token = store.add_labeler(project, "ann")

    def steps(d):
        """(text, classes, aria-pressed) of each step button on screen."""
        return d.execute_script("return [...document.querySelectorAll('#responses .step')].map((b) => ["
                                "b.querySelector('.step-text').textContent, b.className,"
                                " b.getAttribute('aria-pressed')])")

    with serve_in_background(create_app(store, project)) as url:
        browser.get(f"{url}/label#token={token}")
        for _ in range(2):
            _wait(browser, lambda d: d.find_element(By.ID, "task").is_displayed() and steps(d))
            before = browser.find_element(By.ID, "task").get_attribute("data-assignment")
            prompt = browser.find_element(By.ID, "prompt").text
            if prompt == "2+3*4=":
                assert [s[0] for s in steps(browser)] == ["3*4=12", "2+12=15", "answer: 15"]
                browser.find_element(By.CSS_SELECTOR, '.step[data-step="3"]').click()
                browser.find_element(By.CSS_SELECTOR, '.step[data-step="2"]').click()  # the mark moves up
                marks = steps(browser)
                assert [s[2] for s in marks] == ["false", "true", "false"]
                assert "ok" in marks[0][1] and "wrong" in marks[1][1] and "after" in marks[2][1]
                assert browser.find_element(By.ID, "verdict").text == "verdict: incorrect from step 2"
                SHOTS.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(SHOTS / "critique_steps.png"))
                browser.find_element(By.ID, "critique").send_keys("2+12 is 14")
                browser.find_element(By.ID, "corrected").send_keys("3*4=12", Keys.ENTER, "2+12=14")
                browser.find_element(By.XPATH, "//button[starts-with(normalize-space(.), 'Submit')]").click()
            else:
                assert [s[0] for s in steps(browser)] == [PAYLOAD, "answer: 2"]  # explicit steps, as text
                browser.find_element(By.ID, "all-correct").click()
                assert browser.find_element(By.ID, "verdict").text == "verdict: correct"
                browser.find_element(By.ID, "critique").send_keys(Keys.CONTROL, Keys.ENTER)  # no words needed
            _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed()
                  or d.find_element(By.ID, "task").get_attribute("data-assignment") != before)
        _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed())
        assert browser.execute_script("return window.__pwned") is None
    store.close()
    out, n = export_project(directory, tmp_path / "critiques.jsonl", record="critique")
    by_prompt = {r.prompt: r for r in read_records(out, kind="critique")}
    assert n == 2
    marked = by_prompt["2+3*4="]
    assert (marked.critique, marked.verdict, marked.first_wrong_step) == ("2+12 is 14", "incorrect", 2)
    accepted = by_prompt["1+1="]
    assert (accepted.critique, accepted.verdict, accepted.first_wrong_step) == ("verdict: correct", "correct", None)
    fixes = read_records(export_project(directory, tmp_path / "fix.jsonl", record="correction")[0], kind="correction")
    assert [(f.prompt, f.corrected) for f in fixes] == [("2+3*4=", "3*4=12\n2+12=14")]


def test_human_in_the_loop_prompt_optimisation(tmp_path, browser):
    """A prompt-duel project: APOHF picks each duel of two candidate prompts (each shown with its
    answers); a scripted labeler in Chromium presses 1 or 2 for the answers of higher quality; every
    label reaches the loop as the right duel, and the reported prompt is the labeler's favourite."""
    import re

    import numpy as np
    from selenium.webdriver.common.by import By

    from rlxf.app.prompt_duels import PromptDuels, add_prompts

    quality = [3, 1, 4, 0, 2, 5]  # candidate 5 is the labeler's favourite
    rng = np.random.default_rng(0)
    directory = tmp_path / "prompts"
    owner = init_project(directory, "preference", selection="apohf", seed=0)
    add_prompts(directory, [{"prompt": f"instruction {k}", "shown": f"answers of quality {q}",
                             "embedding": rng.standard_normal(4).round(3).tolist()} for k, q in enumerate(quality)],
                max_duels=8, n_init=3)
    store, project = open_project(directory)
    duels = PromptDuels.of(directory, project)
    token = store.add_labeler(project, "ann")
    shown = []
    with serve_in_background(create_app(store, project, duels=duels)) as url:
        browser.get(f"{url}/label#token={token}")
        while True:
            _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed() or _screen(d)[0])
            if browser.find_element(By.ID, "done").is_displayed():
                break
            before = _screen(browser)
            q = [int(re.search(r"quality (\d)", t).group(1)) for t in before[2]]
            shown.append(q)
            browser.find_element(By.TAG_NAME, "body").send_keys("1" if q[0] > q[1] else "2")
            _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed() or _screen(d)[0] != before[0])
        browser.get(f"{url}/project#token={owner}")
        _wait(browser, lambda d: d.find_element(By.ID, "best-prompt").text == "instruction 5")
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / "prompt_duels_project.png"))
    answered = duels.duels(store, project)
    assert len(shown) == len(answered) == 8
    for (i, j, y), q in zip(answered, shown):
        assert {quality[i], quality[j]} == set(q) and y == float(quality[i] > quality[j])
    assert duels.reported(store, project)["prompt"] == "instruction 5"
    store.close()


def test_video_comparison_view_feeds_the_trueskill_table(tmp_path, browser):
    """BASALT-style matches in the app: each item is two episode GIFs side by side (fetched with the
    labeler's token); a scripted judge in Chromium reads the clips' pixels (red = the good agent's episode)
    and answers with a key, a click and a tie; the labels become games and the TrueSkill table puts the
    good agent first."""
    import numpy as np
    from selenium.webdriver.common.by import By

    from rlxf.lab.basalt import games_from_labels, trueskill_table
    from rlxf.tasks.render import write_gif

    directory = tmp_path / "videos_project"
    init_project(directory, "preference")
    store, project = open_project(directory)
    videos = directory / "videos"
    videos.mkdir()
    colour = {"good": (220, 30, 30), "bad": (30, 30, 220)}
    items = []
    for m, pair in enumerate((["good", "bad"], ["bad", "good"], ["good", "bad"])):
        clips = []
        for agent in pair:
            clip = f"clip-{m}-{len(clips)}.gif"
            write_gif([np.full((40, 60, 3), colour[agent], np.uint8), np.full((40, 60, 3), 128, np.uint8)],
                      videos / clip, fps=2)
            clips.append(clip)
        items.append(("Which episode does the task better?", clips, {"videos": True, "agents": pair, "seed": m}))
    store.add_items(project, items)
    token = store.add_labeler(project, "ann")
    pixels = ("return [...document.querySelectorAll('#responses img.clip')].map((img) => {"
              " if (img.dataset.loaded !== '1') return null;"
              " const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;"
              " const x = c.getContext('2d'); x.drawImage(img, 0, 0);"
              " return Array.from(x.getImageData(2, 2, 1, 1).data.slice(0, 3)); })")
    answers = []
    with serve_in_background(create_app(store, project, video_dir=videos)) as url:
        browser.get(f"{url}/label#token={token}")
        for how in ("key", "click", "tie"):
            _wait(browser, lambda d: d.find_element(By.ID, "task").is_displayed()
                  and len(d.execute_script(pixels)) == 2 and None not in d.execute_script(pixels))
            before = browser.find_element(By.ID, "task").get_attribute("data-assignment")
            assert browser.find_element(By.ID, "question").text == "Which episode does the task better?"
            assert not browser.find_elements(By.CSS_SELECTOR, "#responses .text")  # clips, not the clip names
            left_red = browser.execute_script(pixels)[0][0] > 150
            if how == "key":
                SHOTS.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(SHOTS / "video_comparison.png"))
                browser.find_element(By.TAG_NAME, "body").send_keys("1" if left_red else "2")
            elif how == "click":
                what = "A is better" if left_red else "B is better"
                browser.find_element(By.XPATH, f"//button[starts-with(normalize-space(.), '{what}')]").click()
            else:
                browser.find_element(By.TAG_NAME, "body").send_keys("t")
            answers.append((how, left_red))
            _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed()
                  or d.find_element(By.ID, "task").get_attribute("data-assignment") != before)
        _wait(browser, lambda d: d.find_element(By.ID, "done").is_displayed())
    games = games_from_labels(store.labels(project))
    store.close()
    assert len(games) == 3
    for (a, b, y), (how, _) in zip(games, answers):
        assert {a, b} == {"good", "bad"}
        assert y == (0.5 if how == "tie" else (1.0 if a == "good" else 0.0))  # the red clip's agent won
    rows = trueskill_table(games)
    assert [r["agent"] for r in rows] == ["good", "bad"] and rows[0]["wins"] == 2 and rows[0]["draws"] == 1
