"""``lookhere view`` in a real browser: the command serves the shipped checkpoint on a free port,
headless Chromium (Debian's, driven by Playwright; no browser is downloaded) uploads an image,
asks, clicks answer tokens and checks that the overlay changes; then the layer menu, the logit
lens, the localization heads, the JSON download, a bad upload, and a sample from the gallery.
Every request the page makes must stay on the machine.

Set ``LOOKHERE_VIEWER_SCREENSHOT=docs/img/viewer.png`` to write the README's screenshot.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from lookhere.data.synthetic import make_task

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: the shipped checkpoint's localization heads (its model card)
HEADS = [[3, 1], [2, 2], [3, 0]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``lookhere view`` on a free port with a HeadSpec; its URL. Skips without a browser."""
    if CHROMIUM is None:
        pytest.skip("no Chromium installed (apt-get install chromium; .ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (.[dev])")
    pytest.importorskip("gradio", reason="gradio is not installed (.[view])")
    folder = tmp_path_factory.mktemp("view")
    spec = folder / "heads.json"
    table = [[0] * 6 for _ in range(6)]  # the checkpoint's 6 layers x 6 heads
    spec.write_text(json.dumps({"model": "lookhere:llava-mini", "heads": HEADS, "tau": 0.0,
                                "num_samples": 0, "counts": table, "mean_s_img": table,
                                "mean_entropy": table}))
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(folder / "gradio")}
    log = open(folder / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "lookhere.cli", "view", "--port", str(port),
                             "--heads", str(spec), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url, proc, folder / "server.log")
        yield url
    finally:
        proc.terminate()  # as Ctrl-C: the server closes and its download folder goes
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert proc.returncode == 0, (folder / "server.log").read_text()[-3000:]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"lookhere view exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"lookhere view did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser(server):
    """Headless Chromium on a fresh profile, every request off the machine refused and kept in
    ``browser.outside``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900}, accept_downloads=True)
        context.outside = []

        def local_only(route):
            url = route.request.url
            if url.startswith(("http://127.0.0.1", "data:", "blob:")):
                route.continue_()
            else:
                context.outside.append(url)
                route.abort()

        context.route("**/*", local_only)
        yield context
        context.close()


@pytest.fixture
def page(browser, server):
    """A new tab on the page (a new session: its own image and answer)."""
    tab = browser.new_page()
    tab.set_default_timeout(30_000)
    tab.goto(server, wait_until="load")
    tab.wait_for_selector("#ask")
    yield tab
    tab.close()
    assert browser.outside == [], f"the page asked the network: {browser.outside}"


def overlay_src(page) -> str | None:
    return page.evaluate("() => document.querySelector('#overlay img')?.src ?? null")


def wait_new_overlay(page, before: str | None) -> bytes:
    """Waits for the overlay to change from ``before``; the new PNG's bytes."""
    page.wait_for_function("(s) => { const i = document.querySelector('#overlay img');"
                           " return i && i.src !== s && i.complete && i.naturalWidth > 0; }",
                           arg=before)
    return page.request.get(overlay_src(page)).body()


def upload(page, button: str, path: Path) -> None:
    with page.expect_file_chooser() as chooser:
        page.click(button)
    chooser.value.set_files(str(path))


def ask(page, question: str) -> list[str]:
    page.fill("#question textarea", question)
    page.click("#ask")
    page.wait_for_function("() => document.querySelectorAll('#tokens label').length > 0")
    return page.locator("#tokens label").all_inner_texts()


def test_upload_ask_click_tokens(page, tmp_path):
    sample = make_task("scenes", seed=3, image_size=96, mode="instruct", max_objects=4,
                       skills=("rec",)).sample(0)  # "Where is ...?": a box, many tokens
    image = tmp_path / "scene.png"
    sample.image.save(image)
    upload(page, "#upload", image)
    page.wait_for_selector("#image img")
    tokens = ask(page, sample.question)
    assert len(tokens) > 3, tokens
    assert page.locator("#answer textarea").input_value().startswith("[")
    first = wait_new_overlay(page, None)  # the last token's map comes with the answer
    assert first.startswith(b"\x89PNG")
    src = overlay_src(page)
    page.locator("#tokens label").nth(1).click()
    second = wait_new_overlay(page, src)
    assert second != first
    info = page.locator("#info").inner_text()
    assert f"attention of '{tokens[1]}' (token 1), mean of layers, mean of heads" in info
    assert "n/a (no target" in info  # an upload has no target: no ratio

    src = overlay_src(page)  # one layer and head instead of the means
    page.locator("#layer input").click()
    page.get_by_role("option", name="2", exact=True).click()
    assert wait_new_overlay(page, src) != second
    assert "layer 2, mean of heads" in page.locator("#info").inner_text()

    src = overlay_src(page)  # the logit lens
    page.fill("#word textarea", "orange")
    page.click("#lens")
    wait_new_overlay(page, src)
    assert "logit lens: p('orange') at layer 5" in page.locator("#info").inner_text()

    src = overlay_src(page)  # the localization heads, then their JSON
    page.get_by_role("tab", name="localization heads").click()
    assert "heads [[3, 1], [2, 2], [3, 0]]" in page.locator("#spec").inner_text()
    page.fill("#expression textarea", sample.question.removeprefix("Where is ").rstrip("?"))
    page.click("#heads")
    wait_new_overlay(page, src)
    info = page.locator("#info").inner_text()
    assert "localization heads [[3, 1], [2, 2], [3, 0]]" in info and "box (x0, y0, x1, y1)" in info
    with page.expect_download() as download:
        page.click("#json")
    data = json.loads(Path(download.value.path()).read_text())
    assert data["kind"] == "heads" and len(data["box"]) == 4 and data["heads"] == HEADS
    assert data["model"] == "lookhere:llava-mini" and len(data["map"]) == data["grid"]["rows"]


def test_bad_uploads_say_so(page, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    upload(page, "#upload", fake)
    page.get_by_text("notes.png is not an image PIL can read").wait_for()
    big = tmp_path / "huge.png"  # 72 Mi pixels in 9 kB: refused from its header, never decoded
    from PIL import Image

    Image.new("1", (9000, 8000)).save(big)
    upload(page, "#upload", big)
    page.get_by_text("huge.png: 9000x8000 pixels is over the limit").wait_for()
    assert page.locator("#image img").count() == 0  # no image was taken


def test_gallery_sample_shows_a_ratio(page):
    page.locator("#samples button.thumbnail-item").last.click()  # scenes-1, a box question
    page.wait_for_function("() => document.querySelector('#question textarea').value !== ''")
    ask(page, page.locator("#question textarea").input_value())
    wait_new_overlay(page, None)
    src = overlay_src(page)
    page.locator("#tokens label").nth(2).click()
    wait_new_overlay(page, src)
    info = page.locator("#info").inner_text()
    assert "attention ratio on the target: " in info and "n/a" not in info
    shot = os.environ.get("LOOKHERE_VIEWER_SCREENSHOT")
    if shot:
        save_screenshot(page.screenshot(full_page=True), Path(shot))


def save_screenshot(png: bytes, path: Path) -> None:
    """A small PNG of the page (a 256-colour palette: the page is mostly flat colour)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
