"""`opengato serve`'s page, driven in headless Chromium through its four views and two tabs.

It needs Debian's Chromium at /usr/bin/chromium (never a browser that Playwright downloads) and
is skipped without it, except in CI, which installs it (.ci/run). With OPENGATO_SCREENSHOTS set
to a folder it also writes screenshots of the page (of an untrained gato-tiny; those that
docs/serve.md and the README show, of a trained checkpoint, come from docs/screenshots.py):

    OPENGATO_SCREENSHOTS=docs .venv/bin/python -m pytest tests/test_serve_browser.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import test_serve
from test_serve import BABYAI, CARTPOLE, MB, scene

from opengato.seeds import EVAL_SEED_START

# The fixtures of the API tests: the tiny checkpoints and their data, the app on a live server.
setup, live = test_serve.setup, test_serve.live
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def shoot(page, name: str) -> None:
    """Screenshot the page to $OPENGATO_SCREENSHOTS/serve-NAME.png when that is set."""
    folder = os.environ.get("OPENGATO_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"serve-{name}.png"), full_page=True)


def browse_play(page, expect) -> None:
    page.fill("#play-task", "classic/NoSuchTask")
    page.click("#play-form button[type=submit]")
    expect(page.locator("#play-error")).to_contain_text("unknown task 'classic/NoSuchTask'")
    assert page.input_value("#play-seed") == str(EVAL_SEED_START)  # held out by default
    page.fill("#play-task", CARTPOLE)
    page.select_option("#play-delay", "0")
    page.click("#play-form button[type=submit]")
    panel = page.locator("#play-panel")
    expect(panel.locator("dl[data-done=true]")).to_be_visible(timeout=60_000)
    expect(page.locator("#play-error")).to_be_hidden()
    assert panel.locator("img.frame").get_attribute("src").startswith("data:image/jpeg;base64,")
    for text in ("Return so far", "Expert", "return 500", "Random policy", "Normalised"):
        expect(panel.locator("dl")).to_contain_text(text)
    expect(panel.locator("ol.tokens li").last).to_contain_text("t=0")
    expect(page.locator("#play-pause")).to_be_disabled()  # over: nothing to pause
    shoot(page, "play")


def browse_caption(page, expect, tmp_path: Path) -> None:
    page.click("nav button[data-view=caption]")
    submit = "#caption-form button[type=submit]"
    page.set_input_files("#caption-file", files=[
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture"}])  # fmt: skip
    page.click(submit)
    expect(page.locator("#caption-error")).to_contain_text("notes.txt is not an image")
    huge = tmp_path / "huge.png"
    with huge.open("wb") as f:
        f.truncate(50 * MB)  # sparse: 50 MB on paper
    page.set_input_files("#caption-file", str(huge))
    page.click(submit)
    expect(page.locator("#caption-error")).to_contain_text(
        "huge.png is 50.0 MB; the limit is 10 MB"
    )
    status, detail = page.evaluate("""async () => {  // past the page's own check: the server's
        const r = await fetch('/api/caption', {method: 'POST', body: new Blob([new Uint8Array(50e6)])});
        return [r.status, (await r.json()).detail]; }""")  # fmt: skip
    assert status == 413 and "50.0 MB; the limit is 10 MB" in detail
    scene().save(tmp_path / "scene.png")
    page.set_input_files("#caption-file", str(tmp_path / "scene.png"))
    page.click(submit)
    expect(page.locator("#caption-result")).to_be_visible()
    expect(page.locator("#caption-error")).to_be_hidden()
    assert page.locator("#caption-text").inner_text().strip()
    shoot(page, "caption")


def browse_chat(page, expect) -> None:
    page.click("nav button[data-view=chat]")
    page.click("#chat-form button[type=submit]")
    expect(page.locator("#chat-error")).to_contain_text("type a question first")
    page.fill("#chat-input", "What does a Python list hold?")
    page.click("#chat-form button[type=submit]")
    expect(page.locator(".bubble.gato")).to_have_count(1)
    expect(page.locator(".bubble.you")).to_have_text("What does a Python list hold?")
    expect(page.locator("#chat-error")).to_be_hidden()
    shoot(page, "chat")


def browse_compare(page, expect, setup) -> None:
    page.click("nav button[data-view=compare]")
    assert page.input_value("#compare-a").endswith("step_1")  # the served checkpoint
    page.fill("#compare-b", "/no/such/run")
    page.click("#compare-form button[type=submit]")
    expect(page.locator("#compare-error")).to_contain_text(
        "Checkpoint B: cannot load checkpoint '/no/such/run'")  # fmt: skip
    page.fill("#compare-b", setup.b)
    page.click("#compare-form button[type=submit]")
    for side, path in (("#compare-left", "/a/step_1"), ("#compare-right", "/b/step_1")):
        expect(page.locator(f"{side} dl[data-done=true]")).to_be_visible(timeout=60_000)
        expect(page.locator(f"{side} .panel-title")).to_contain_text(path)
        assert page.locator(f"{side} img.frame").get_attribute("src").startswith("data:image/")
    expect(page.locator("#compare-error")).to_be_hidden()
    expect(page.locator("#compare-pause")).to_be_disabled()  # both over: nothing to pause
    shoot(page, "compare")


def browse_two_tabs(page, expect) -> None:
    """A second tab plays BabyAI while the first plays CartPole: each shows its own episode."""
    other = page.context.new_page()
    other.goto(page.url)
    expect(other.locator("body")).to_have_attribute("data-ready", "1")
    other.fill("#play-task", BABYAI)
    for tab in (page, other):
        tab.click("nav button[data-view=play]")
        tab.select_option("#play-delay", "0")
    for tab in (page, other):
        tab.click("#play-form button[type=submit]")
    for tab in (page, other):
        tab.wait_for_function("document.querySelectorAll('#play-panel ol.tokens li').length >= 5")
    expect(page.locator("#play-panel dl")).to_contain_text(CARTPOLE)
    expect(other.locator("#play-panel dl")).to_contain_text(BABYAI)
    expect(other.locator("#play-panel .mission")).to_contain_text("mission: go to the red ball")
    expect(page.locator("#play-panel .mission")).to_have_text("")
    other.close()


@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),  # CI must have it
                    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install "
                    "chromium; .ci/run installs it)")  # fmt: skip
def test_browser_plays_captions_chats_and_compares(live, setup, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1200, "height": 760}).new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live)
            expect(page.locator("body")).to_have_attribute("data-ready", "1")
            expect(page.locator("#served")).to_contain_text("gato-tiny")
            browse_play(page, expect)
            browse_caption(page, expect, tmp_path)
            browse_chat(page, expect)
            browse_compare(page, expect, setup)
            browse_two_tabs(page, expect)
            assert errors == []
        finally:
            browser.close()
