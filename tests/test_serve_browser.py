"""The live page in a real browser: draw a 7 and a 1 with pointer strokes, upload a file, click a
feature map, use the keyboard; screenshots at desktop and phone widths.

Needs Chromium at /usr/bin/chromium, the playwright package and real MNIST (CNNLAB_DATA), since
only a model trained on real digits can read drawn ones; skips, saying which is missing, otherwise.
Screenshots go to $CNNLAB_ARTIFACTS when set, else to pytest's temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.serve_support import (
    digit_images,
    png_bytes,
    real_data_root,
    serve_process,
    train_run_dir,
)

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

# Strokes on the 280x280 pad, in pad pixels: a 7 (bar, then the long diagonal) and a 1.
SEVEN = [[(85, 70), (200, 70), (185, 110), (160, 160), (135, 220)]]
ONE = [[(140, 55), (140, 225)]]


@pytest.fixture(scope="module")
def playwright_api():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed"
    )
    return sync_api


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, playwright_api):
    if real_data_root() is None:
        pytest.skip("drawn digits need a model trained on real MNIST: set CNNLAB_DATA")
    return train_run_dir(tmp_path_factory.getbasetemp(), real=True)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    with serve_process(run_dir, tmp_path_factory.mktemp("serve") / "serve.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright_api):
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("CNNLAB_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_page(browser, server, viewport):
    page = browser.new_page(viewport=viewport)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)  # the example was answered
    return page, errors


def draw(page, strokes) -> None:
    """Real pointer strokes: press, move in small steps, release."""
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / 280
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=12)
        page.mouse.up()


def screenshot(page, path: Path, full_page: bool = False) -> None:
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000
    print(f"screenshot: {path}")


def wait_for_label(page, label: str) -> None:
    page.wait_for_function(
        "label => document.getElementById('guess').dataset.label === label",
        arg=label,
        timeout=20_000,
    )


def layout(page) -> dict:
    """Where the panels are: these must not move while a learner draws."""
    return page.evaluate(
        """() => Object.fromEntries(['#pad', '#seen', '#probs', '#stages', '#explain',
            'section[data-stage]:last-child'].map(s => {
              const r = document.querySelector(s).getBoundingClientRect();
              return [s, [r.x, r.y, r.width, r.height]]; }))"""
    )


def test_draw_a_seven_and_a_one(browser, server, artifacts):
    page, errors = open_page(browser, server, DESKTOP)
    stages = page.locator("section[data-stage]")
    assert stages.count() == 4
    assert page.locator("section[data-stage].empty").count() == 0
    assert page.locator("section[data-stage='conv1'] .tile").count() == 32
    assert page.locator("section[data-stage='pool#2'] .tile").count() == 64

    page.click("#clear")
    assert page.inner_text("#guess").strip() == "\u2013"
    before = layout(page)
    draw(page, SEVEN)
    wait_for_label(page, "7")
    assert layout(page) == before  # nothing moved while drawing
    screenshot(page, artifacts / "serve-desktop-seven.png")

    page.click("#clear")
    draw(page, ONE)
    wait_for_label(page, "1")
    assert layout(page) == before
    lit = page.evaluate(
        """() => { const c = document.querySelector("section[data-stage='conv1'] canvas");
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) n += d[i] + d[i + 1] + d[i + 2] > 0;
        return n; }"""
    )
    assert lit > 0  # the maps were drawn
    best = page.locator("#probs li.best .name").inner_text()
    assert best == "1"
    assert errors == []


def test_upload_click_and_keyboard(browser, server, artifacts, tmp_path, run_dir):
    pictures, labels = digit_images(50, real=True)
    from cnnlab.runfiles import load_run
    from cnnlab.serve.model_service import ModelService

    service = ModelService(load_run(run_dir))
    for picture, label in zip(pictures, labels):  # a test digit the model reads right, as paper
        paper = 255 - np.kron(picture, np.ones((8, 8), np.uint8))  # dark ink on white, 224x224
        data = png_bytes(paper)
        if service.predict(service.prepare(data)).label == str(label):
            break
    path = tmp_path / "digit.png"
    path.write_bytes(data)

    page, errors = open_page(browser, server, DESKTOP)
    page.set_input_files("#file", str(path))
    wait_for_label(page, str(label))

    tile = page.locator("section[data-stage='conv1'] .tile").nth(5)
    tile.click(position={"x": 20, "y": 30})
    page.wait_for_selector("#explain .check.ok", timeout=20_000)
    assert "conv1, map 6 of 32" in page.inner_text("#explain")
    assert page.locator("#explain .numgrid").count() == 2  # the input window and the 3x3 filter
    assert not page.locator("#seen-marker").is_hidden()
    screenshot(page, artifacts / "serve-desktop-explain.png")

    first = page.locator("section[data-stage='conv2'] .tile").first
    first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#explain').innerText.includes('conv2, map 2 of 64')",
        timeout=20_000,
    )
    page.wait_for_selector("#explain .check.ok")
    assert (
        page.evaluate("document.activeElement.getAttribute('aria-label')") == "conv2, map 2 of 64"
    )
    assert errors == []


def test_phone_width(browser, server, artifacts):
    page, errors = open_page(browser, server, PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    pad = page.locator("#pad").bounding_box()
    assert pad["x"] >= 0 and pad["x"] + pad["width"] <= PHONE["width"]
    page.click("#clear")
    draw(page, SEVEN)
    wait_for_label(page, "7")
    screenshot(page, artifacts / "serve-phone.png")
    screenshot(page, artifacts / "serve-phone-full.png", full_page=True)
    assert errors == []
