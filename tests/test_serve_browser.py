"""The playground in a real browser: headless Chromium loads the page, types a prime, presses
Generate, and the text streamed into the page is the text the API gives for the same options.

Needs Chromium (Debian's `chromium` package; .ci/run installs it) and the playwright package
(driving that Chromium: it downloads no browser of its own). Skipped, saying why, without them.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import httpx
import pytest

from serving import load, running_server, wait_until

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"]


def chromium() -> str:
    path = os.environ.get("CHARRNN_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if not path:
        pytest.skip("no Chromium found (install Debian's chromium package, or set "
                    "CHARRNN_CHROMIUM to a Chromium binary)")
    return path


@pytest.fixture
def browser_page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright package is not installed")
    executable = chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=CHROMIUM_FLAGS, timeout=60_000)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            browser.close()


def wait_in_page(page, expression: str, seconds: float = 30) -> None:
    """Until the expression is true in the page: read from outside, as Playwright's own
    wait_for_function would evaluate a string inside it, which the pages' Content-Security-
    Policy (no eval) forbids."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"waited {seconds} s for {expression}"
        time.sleep(0.05)


def test_the_playground_streams_text_into_the_page(tiny_run, browser_page, tmp_path):
    page = browser_page
    models = load(tiny_run, max_length=1_000_000)
    with running_server(models) as url:
        page.goto(url + "/")
        wait_in_page(page, "document.querySelector('#model').options.length > 0")
        assert page.input_value("#model") == "run"
        page.fill("#prime", "The ")
        page.fill("#length", "200")
        page.fill("#seed", "7")
        page.click("#generate")
        wait_in_page(page, "document.querySelector('#status').textContent.startsWith('done')")
        shown = page.inner_text("#output")
        expected = httpx.post(url + "/v1/generate", timeout=30, json={
            "prime": "The ", "length": 200, "temperature": 0.8, "seed": 7}).json()
        assert shown == "The " + expected["samples"][0]["text"]
        assert page.locator("#output .c").count() == 200  # one coloured span per character

        text = expected["samples"][0]["text"]
        page.hover("#output .c >> nth=3")
        assert page.inner_text("#hover").startswith(f'"{text[3]}": probability ')
        # Without a mouse: the arrow keys move through the characters, from the last one
        # explained; Home goes to the first. The line below is read out (aria-live).
        page.focus("#output")
        page.keyboard.press("ArrowRight")
        assert page.inner_text("#hover").startswith(f'{json.dumps(text[4])}: probability ')
        page.keyboard.press("Home")
        page.keyboard.press("ArrowRight")
        assert page.inner_text("#hover").startswith(f'{json.dumps(text[1])}: probability ')
        assert page.locator("#output .c.current").count() == 1
        assert page.get_attribute("#hover", "aria-live") == "polite"
        page.screenshot(path=str(tmp_path / "playground.png"))
        assert (tmp_path / "playground.png").stat().st_size > 10_000

        # Stop: the stream ends and the server frees its row. A million characters (beyond the
        # slider's range) runs until stopped, however fast the machine.
        page.eval_on_selector("#length", "el => { el.max = '1000000'; el.value = '1000000' }")
        page.fill("#seed", "")
        page.click("#generate")
        wait_in_page(page, "document.querySelectorAll('#output .c').length > 0")
        page.click("#stop")
        wait_in_page(page,
                     "document.querySelector('#status').textContent.startsWith('stopped')")
        engine = models["run"].engine
        wait_until(lambda: engine.load()["rows"] == 0, 10, "the row to be freed")
        assert page.is_enabled("#generate") and not page.is_enabled("#stop")


def test_the_api_documents_itself_without_the_internet(tiny_run, browser_page):
    page = browser_page
    with running_server(load(tiny_run)) as url:
        page.goto(url + "/docs")
        wait_in_page(page, "document.querySelectorAll('.operation').length >= 3")
        text = page.inner_text("#api")
        for part in ("POST /v1/generate", "GET /v1/models", "GET /healthz", "temperature",
                     "num_samples", "422", "18446744073709551615"):  # the seed's maximum, exact
            assert part in text, part
        assert "18446744073709552000" not in text  # rounded to a double, it was shown so


def test_the_page_sends_what_it_shows(tiny_run, browser_page):
    """A seed above 2**53 was rounded as a JavaScript number (another text than asked for;
    the documented maximum was refused); after the browser's Back the sliders' labels showed
    their first values, not the ones the next request sends; the icon broke the page's own
    Content-Security-Policy (an error in the console on every load)."""
    page = browser_page
    errors = []
    page.on("console", lambda message: errors.append(message.text)
            if message.type == "error" else None)
    with running_server(load(tiny_run)) as url:
        page.goto(url + "/")
        wait_in_page(page, "document.querySelector('#model').options.length > 0")
        seed = 2**64 - 1
        page.fill("#prime", "The ")
        page.fill("#length", "100")
        page.fill("#seed", str(seed))
        page.click("#generate")
        wait_in_page(page, "document.querySelector('#status').textContent.startsWith('done')")
        expected = httpx.post(url + "/v1/generate", timeout=30, json={
            "prime": "The ", "length": 100, "temperature": 0.8, "seed": seed}).json()
        assert page.inner_text("#output") == "The " + expected["samples"][0]["text"]

        page.eval_on_selector("#temperature", "el => { el.value = '1.5'; "
                                              "el.dispatchEvent(new Event('input')) }")
        page.goto(url + "/docs")
        page.go_back()
        wait_in_page(page, "document.querySelector('#model').options.length > 0")
        assert page.inner_text("#temperature-value") == page.input_value("#temperature")
    assert not errors, errors


def test_a_wrong_api_key_is_told_from_a_missing_one(tiny_run, browser_page):
    page = browser_page
    with running_server(load(tiny_run), api_key="right") as url:
        page.goto(url + "/")
        wait_in_page(page, "!document.querySelector('#key-row').hidden")
        assert page.inner_text("#status") == "this server needs an API key"
        page.fill("#api-key", "wrong")
        page.press("#api-key", "Enter")  # Enter uses the key, as the button does
        wait_in_page(page, "document.querySelector('#status').textContent.includes('not this')")
        page.fill("#api-key", "right")
        page.press("#api-key", "Enter")
        wait_in_page(page, "document.querySelector('#model').options.length > 0")
        assert page.is_hidden("#key-row")
