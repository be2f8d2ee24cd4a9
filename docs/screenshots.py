"""The screenshots of `opengato serve` that the README and docs/serve.md show, taken from a
trained checkpoint (the `make demo` run) rather than the browser test's untrained gato-tiny:

    .venv/bin/python docs/screenshots.py runs/demo/train

It serves CHECKPOINT in this process (uvicorn on a free port, in a thread, as the `live` fixture
of tests/test_serve.py does), drives Debian's headless Chromium (/usr/bin/chromium) through the
page with Playwright, and overwrites docs/serve-{play,caption,chat,compare}.png: an episode of
--task played to its end from a held-out seed, the caption of a validation scene of the caption
corpus (never trained on), the answer to --question, and CHECKPOINT against --rival on the same
task and seed. Prompts and reference scores come from --data-dir (default: the default data
root). It stops with a message if the page shows an error. The browser test can still write its
own screenshots: OPENGATO_SCREENSHOTS=docs .venv/bin/python -m pytest tests/test_serve_browser.py
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from opengato.data.corpora import load_captions
from opengato.serve.app import ServeConfig, Server, make_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
VIEWPORT = {"width": 1200, "height": 760}
EPISODE_MS = 600_000  # a 500-step Meta-World episode on a 2-core CPU takes minutes


@contextmanager
def serving(cfg: ServeConfig):
    """The app on a uvicorn server on a free port, in a thread: its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(make_app(Server(cfg)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise SystemExit("the server did not start")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def held_out_scene(data_dir: str | None) -> Image.Image:
    """The first validation scene of the caption corpus whose image no training scene has."""
    seen = {image.tobytes() for image, _, _ in load_captions(data_dir, "train", "scenes")}
    for image, _, _ in load_captions(data_dir, "valid", "scenes"):
        if image.tobytes() not in seen:
            return Image.fromarray(np.ascontiguousarray(image))
    raise SystemExit("the caption corpus has no validation scene unlike every training scene")


def no_error(page, expect, banner: str) -> None:
    """Stop unless the view's error banner is hidden and no episode ended in an error."""
    expect(page.locator(banner)).to_be_hidden()
    for status in page.locator("dl.stats").all_inner_texts():
        if "error:" in status:
            raise SystemExit(f"the page shows an error:\n{status}")


def play(page, expect, args) -> None:
    page.fill("#play-task", args.task)
    page.fill("#play-seed", str(args.seed))
    page.select_option("#play-delay", "0")
    page.click("#play-form button[type=submit]")
    expect(page.locator("#play-panel dl[data-done=true]")).to_be_visible(timeout=EPISODE_MS)
    expect(page.locator("#play-pause")).to_be_disabled()  # the page has seen the end
    no_error(page, expect, "#play-error")


def caption(page, expect, args) -> None:
    page.click("nav button[data-view=caption]")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.png"
        held_out_scene(args.data_dir).save(path)
        page.set_input_files("#caption-file", str(path))
        page.click("#caption-form button[type=submit]")
        expect(page.locator("#caption-result")).to_be_visible(timeout=60_000)
    no_error(page, expect, "#caption-error")


def chat(page, expect, args) -> None:
    page.click("nav button[data-view=chat]")
    page.fill("#chat-input", args.question)
    page.click("#chat-form button[type=submit]")
    expect(page.locator(".bubble.gato")).to_have_count(1, timeout=60_000)
    no_error(page, expect, "#chat-error")


def compare(page, expect, args) -> None:
    page.click("nav button[data-view=compare]")
    page.fill("#compare-b", args.rival)
    page.fill("#compare-task", args.task)
    page.fill("#compare-seed", str(args.seed))
    page.click("#compare-form button[type=submit]")
    for side in ("#compare-left", "#compare-right"):
        expect(page.locator(f"{side} dl[data-done=true]")).to_be_visible(timeout=EPISODE_MS)
    expect(page.locator("#compare-pause")).to_be_disabled()
    no_error(page, expect, "#compare-error")


VIEWS = {"play": play, "caption": caption, "chat": chat, "compare": compare}
"""Each screenshot, serve-NAME.png, and what the page does before it is taken."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write docs/serve-*.png from a trained checkpoint (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", help="checkpoint or run folder (its latest step_*)")
    parser.add_argument("--data-dir", help="data root (None: $OPENGATO_DATA or ~/.opengato/data)")
    parser.add_argument("--out", default=str(Path(__file__).parent), help="folder of the PNGs")
    parser.add_argument("--task", default="metaworld/door-open-v3", help="task of play, compare")
    parser.add_argument("--seed", type=int, default=1_000_002, help="reset seed (held out)")
    parser.add_argument("--rival", default="random:gato-1m", help="checkpoint B of compare")
    parser.add_argument("--question", default="What does a Python list hold?", help="for chat")
    args = parser.parse_args()

    from playwright.sync_api import expect, sync_playwright

    cfg = ServeConfig(checkpoint=args.checkpoint, data_dir=args.data_dir)
    with serving(cfg) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=60_000)
            for name, view in VIEWS.items():
                view(page, expect, args)
                if errors:
                    raise SystemExit(f"the page raised: {errors}")
                path = Path(args.out) / f"serve-{name}.png"
                page.screenshot(path=str(path), full_page=True)
                print(f"wrote {path}")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
