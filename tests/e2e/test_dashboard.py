"""The dashboard in a real headless Chromium (selenium) against a real ``tracerl serve`` over a sqlite store.

The store is filled through the store contract by :func:`tracerl.bench.dashboard.populate` (recorded calls
with the tiny model's token ids), the run folder by the real :class:`~tracerl.metrics.MetricsLogger`; the
server runs with a token, ``--runs`` and ``--tokenizer``.

Needs Debian's ``chromium`` and ``chromium-driver``. Without them the tests skip, saying so; with
``TRACERL_REQUIRE_BROWSER=1`` (set by CI) a missing browser fails instead. With ``TRACERL_SCREENSHOTS=1``
the tests save screenshots to ``docs/screenshots/`` (off by default so test runs leave the tree clean).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracerl.algorithms.grpo import GRPO
from tracerl.bench.dashboard import populate
from tracerl.metrics import MetricsLogger
from tracerl.server.dashboard.reader import call_credit
from tracerl.server.testing import ServerProcess, start_server
from tracerl.store import connect
from tracerl.types import RolloutQuery, RolloutSpec, RolloutStatus

TOKEN = "dash-secret-7f3a"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
WAIT_S = 20.0


def _browser_paths() -> tuple[str, str] | None:
    driver = shutil.which("chromedriver")
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    paths = _browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        paths = None
    if paths is None:
        why = "needs selenium and Debian's chromium + chromium-driver (apt-get install -y chromium chromium-driver)"
        if os.environ.get("TRACERL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"TRACERL_REQUIRE_BROWSER=1 but the dashboard browser tests cannot run: {why}")
        pytest.skip(why)
    options = Options()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions"):
        options.add_argument(arg)
    d = webdriver.Chrome(options=options, service=Service(paths[1]))
    d.set_page_load_timeout(60)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[ServerProcess, str]]:
    """A token server over a populated sqlite store and a run folder; yields it and the store URL."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{root / 'store.db'}"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    store = connect(url)
    populate(store, 120, detailed=8, seed=1, encode=lambda text: tokenizer.encode(text, add_special_tokens=False))
    store.close()
    grpo = GRPO(model="tiny-random", group_size=4, returns="step", gamma=0.5)  # the run's credit mode
    metrics = MetricsLogger(root / "runs" / "grpo-demo", append=False, config={"stages": [grpo.to_json()]})
    for step in range(1, 13):
        metrics.log("train", step, {"reward_mean": 0.2 + 0.04 * step, "loss": 0.2 / step, "kl": 0.001 * step,
                                    "clip_fraction": 0.02 * (step % 3), "tokens_per_s": 1200.0 + 15 * step})
        if step % 4 == 0:
            metrics.log("val", step, {"val_reward": 0.15 + 0.05 * step, "n": 16})
    metrics.close()
    extra = ("--runs", str(root / "runs"), "--tokenizer", str(tiny_model_dir))
    with start_server(url, token=TOKEN, extra_args=extra) as server:
        yield server, url


def _wait(d: Any, css: str, *, count: int = 1) -> list[Any]:
    """Elements matching ``css`` once at least ``count`` are on the page (fails after WAIT_S)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = d.find_elements(By.CSS_SELECTOR, css)
        if len(found) >= count and all(e.is_displayed() for e in found[:1]):
            return found
        time.sleep(0.1)
    text = d.find_element(By.TAG_NAME, "body").text[:800]
    raise AssertionError(f"no {count} × {css!r} within {WAIT_S} s; page text: {text}")


def _texts(d: Any, css: str, attribute: str = "textContent") -> list[str]:
    """``attribute`` of every element matching ``css``, read in one script: the live poll re-renders the page
    every few seconds, so elements found in one call may be gone by the next."""
    return d.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map((e) => e[arguments[1]] ?? e.getAttribute(arguments[1]))",
        css, attribute,
    )


def _text(d: Any, css: str) -> str:
    found = _texts(d, css, "innerText")
    return found[0] if found else ""


def _until(check: Any, what: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except StaleElementReferenceException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {WAIT_S} s")


def _fmt(x: float) -> str:
    """A number as the page prints it (``fmt`` in app.js): integers bare, others with 3 decimals."""
    return str(int(x)) if float(x).is_integer() else f"{x:.3f}"


def _shot(d: Any, name: str) -> None:
    if os.environ.get("TRACERL_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        height = min(2400, int(d.execute_script("return document.documentElement.scrollHeight")))
        d.set_window_size(1400, max(1000, height))  # the whole page, up to a limit
        d.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
        d.set_window_size(1400, 1000)


def _sign_in(d: Any, server: ServerProcess, token: str) -> None:
    from selenium.webdriver.common.by import By

    d.get(server.url + "/")
    d.execute_script("sessionStorage.clear()")
    d.get(server.url + "/#/")
    d.refresh()
    _wait(d, "#token")
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.CSS_SELECTOR, "#login button").click()


def test_a_wrong_token_is_refused_and_never_leaves_the_tab(driver: Any, site: tuple[ServerProcess, str]) -> None:

    server, _ = site
    _sign_in(driver, server, "not-the-token")
    _until(lambda: "refused" in _text(driver, "#login-error"), "the refusal message")
    assert _texts(driver, "#counts") == []  # no data was shown
    _shot(driver, "login-refused")
    _sign_in(driver, server, TOKEN)
    _wait(driver, "#counts")
    assert TOKEN not in driver.current_url and "not-the-token" not in driver.current_url
    assert TOKEN not in server.log_tail(100_000)


def test_overview_counts_and_charts(driver: Any, site: tuple[ServerProcess, str]) -> None:

    server, url = site
    _sign_in(driver, server, TOKEN)
    _wait(driver, "#counts")
    store = connect(url)
    try:
        failed = store.query_rollouts(RolloutQuery(status=[RolloutStatus.FAILED], limit=1)).total
    finally:
        store.close()
    link = _text(driver, "a[href='#/rollouts?mode=train&status=failed']")
    link_val = _text(driver, "a[href='#/rollouts?mode=val&status=failed']")
    assert int(link) + int(link_val) == failed > 0
    _wait(driver, "#charts svg.chart", count=5)
    assert _texts(driver, "#charts svg.chart", "data-title") == ["reward", "loss", "KL", "clip fraction", "tokens/s"]
    reward = "#charts svg.chart[data-title=reward]"
    assert _texts(driver, f"{reward} path.series", "data-series") == ["train", "held-out"]
    assert len(_texts(driver, f"{reward} circle")) == 12 + 3  # one marker per logged value
    assert "training step" in _texts(driver, f"{reward} text.xlabel") and _texts(driver, f"{reward} text.ylabel") == [
        "reward"]  # axis labels
    # the path's points are the logged values: its first point is step 1 at 0.24, drawn inside the plot area
    d_attr = _texts(driver, f"{reward} path.series", "d")[0]
    assert d_attr.startswith("M") and d_attr.count("L") == 11
    _shot(driver, "overview")


def _click(d: Any, css: str) -> None:
    d.execute_script("document.querySelector(arguments[0]).click()", css)


def _numbers(d: Any, css: str) -> list[float]:
    return [float(t) for t in _texts(d, css) if t != "–"]


def test_rollouts_table_filters_sorts_and_pages(driver: Any, site: tuple[ServerProcess, str]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    server, url = site
    _sign_in(driver, server, TOKEN)
    _wait(driver, "#counts")
    driver.get(server.url + "/#/rollouts")
    _wait(driver, "tr.rollout-row", count=50)
    store = connect(url)
    try:
        total = store.query_rollouts(RolloutQuery(limit=1)).total
        succeeded = store.query_rollouts(RolloutQuery(status=[RolloutStatus.SUCCEEDED], limit=1)).total
    finally:
        store.close()
    assert _text(driver, "#range") == f"1–50 of {total}"

    _click(driver, "th[data-sort='reward']")  # highest reward first
    _until(lambda: "sort=reward" in driver.current_url and _texts(driver, "th.sorted", "data-arrow") == [" ▼"],
           "sort by reward")
    rewards = _numbers(driver, "td.reward")
    assert rewards == sorted(rewards, reverse=True) and len(rewards) == 50
    _shot(driver, "rollouts")

    Select(driver.find_element(By.ID, "f-status")).select_by_value("succeeded")
    _click(driver, "#apply")
    _until(lambda: _text(driver, "#range") == f"1–50 of {succeeded}", "the status filter")
    assert set(_texts(driver, "tr.rollout-row .status")) == {"succeeded"}
    first_page = _texts(driver, "tr.rollout-row a")
    top = _numbers(driver, "td.reward")
    _click(driver, "#next")
    _until(lambda: _text(driver, "#range") == f"51–100 of {succeeded}", "the next page")
    second_page = _texts(driver, "tr.rollout-row a")
    assert len(second_page) == 50 and not set(first_page) & set(second_page)
    rest = _numbers(driver, "td.reward")
    assert rest == sorted(rest, reverse=True) and max(rest) <= min(top)  # the order continues across pages

    _click(driver, "th[data-sort='reward']")  # clicking the sorted column again reverses it
    _until(lambda: "dir=asc" in driver.current_url and _text(driver, "#range").startswith("1–50"), "ascending")
    ascending = _numbers(driver, "td.reward")
    assert ascending == sorted(ascending) and ascending[0] <= min(rest)


def test_live_polling_shows_new_rollouts(driver: Any, site: tuple[ServerProcess, str]) -> None:
    server, url = site
    _sign_in(driver, server, TOKEN)
    _wait(driver, "#counts")
    driver.get(server.url + "/#/rollouts?status=queued")
    _wait(driver, "#range")
    before = _text(driver, "#range")
    store = connect(url)
    try:
        [new] = store.enqueue([RolloutSpec(task={"question": "live?"}, group_id="live")])
        queued = store.query_rollouts(RolloutQuery(status=[RolloutStatus.QUEUED], limit=1)).total
    finally:
        store.close()
    _until(lambda: _text(driver, "#range") == f"1–{queued} of {queued}", f"the poll (was {before!r})")
    assert new.rollout_id in _texts(driver, "tr.rollout-row a")


def test_rollout_page_shows_calls_rewards_tokens_and_credit(driver: Any, site: tuple[ServerProcess, str]) -> None:

    server, url = site
    store = connect(url)
    try:  # the first recorded rollout (populate records calls for the first 8) whose group has reward variance
        first = next(r for r in store.query_rollouts(RolloutQuery(limit=8)).items
                     if r.status is RolloutStatus.SUCCEEDED
                     and call_credit(store, r, returns="step", gamma=0.5, advantage="grpo")["calls"])
        spans = store.get_spans(rollout_id=first.rollout_id)
    finally:
        store.close()
    reward = first.reward
    assert reward is not None
    calls = [s for s in spans if s.kind == "llm_call" and s.attempt_id == spans[-1].attempt_id]
    _sign_in(driver, server, TOKEN)
    _wait(driver, "#counts")
    driver.get(f"{server.url}/#/rollout/{first.rollout_id}")
    _wait(driver, "li.span.llm_call", count=2)
    assert [int(x) for x in _texts(driver, "li.span.llm_call", "data-seq")] == [c.seq for c in calls]
    assert "add(" in _text(driver, "li.span.llm_call .toolcall")
    answer = calls[1].attributes["response"]["choices"][0]["message"]["content"]
    assert _texts(driver, "li.span.llm_call .reply")[1] == "reply" + answer
    assert f"completion {len(calls[1].response_ids or [])} tok" in _texts(driver, "li.span.llm_call .span-head")[1]
    strip = _texts(driver, "li.span.llm_call:last-of-type .heat span")
    assert len(strip) == len(calls[1].response_ids or [])
    assert "".join(strip).strip() == answer  # token text, decoded by the server's --tokenizer
    assert "valid_tool_call = 0.100" in _text(driver, "li.span.reward")
    assert _texts(driver, "#timeline rect")
    _click(driver, "details.call summary")  # open the first call's messages for the screenshot
    _shot(driver, "rollout")

    # the run's credit mode (step returns, γ = 0.5, from its run_config.json): the first call gets its 0.1
    # plus γ·R, the last call R (tracerl.credit.call_returns)
    assert _text(driver, "#credit-source") == "credit mode: run grpo-demo"
    step = [f"G = {_fmt(0.1 + 0.5 * reward)}", f"G = {_fmt(reward)}"]
    assert [t.split(",")[0] for t in _texts(driver, ".credit")] == step
    driver.execute_script(  # as a user choosing "uniform" and typing 1: the form's change event reloads the credit
        "const f = document.getElementById('credit-mode'); f.returns.value = 'uniform'; f.gamma.value = '1';"
        "f.dispatchEvent(new Event('change'));"
    )
    _until(lambda: "returns=uniform" in driver.current_url, "the credit mode change")
    expected = [f"G = {_fmt(reward)}"] * 2  # uniform: every call gets R
    _until(lambda: [t.split(",")[0] for t in _texts(driver, ".credit")] == expected, f"credit {expected}")
    assert _text(driver, "#credit-source") == "credit mode: chosen on this page"


def test_resource_versions_show_diffs(driver: Any, site: tuple[ServerProcess, str]) -> None:

    server, _ = site
    _sign_in(driver, server, TOKEN)
    _wait(driver, "#resources")
    _click(driver, "#resources a")
    _wait(driver, "section.version", count=2)
    assert _texts(driver, "section.version", "data-version") == ["2", "1"]  # newest first
    added = _texts(driver, "section.version[data-version='2'] .add")
    removed = _texts(driver, "section.version[data-version='2'] .del")
    assert '+  "system": "You are a careful calculator. Answer with a number."' in added  # keys sorted: last
    assert '-  "system": "You are a careful calculator."' in removed and '-  "demos": [],' in removed
    _shot(driver, "resource-diff")
