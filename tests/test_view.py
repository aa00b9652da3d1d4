"""`edge view`: its bounded state, its outlines, its hub, and the page in a real headless
Chromium while a camera streams strips through a live daemon."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edge.cli.main import app
from edge.line.camera import FramePublisher
from edge.protocol import rle
from edge.tools.view.app import Hub, _Client, _page
from edge.tools.view.render import MAX_CONTOURS, mask_contours
from edge.tools.view.state import (
    COIL_POINTS,
    DRAW_EVERY_S,
    FRAMES_PER_CAMERA,
    MAX_CAMERAS,
    OTHER,
    STRIPS_PER_CAMERA,
    ViewState,
)
from edge.vision.palette import class_rgb
from tests.conftest import free_port

EDGE = [sys.executable, "-m", "edge.cli.main"]
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


class Clock:
    """A clock tests move by hand; with ``tick``, each reading moves it on by that much."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 1000.0
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def result(camera: str, seq: int, defects: list[dict[str, Any]] | None = None,
           meta: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return {"kind": "result", "camera": camera, "seq": seq, "shape": [256, 1600],
            "defects": defects or [], "meta": meta or {}}  # fmt: skip


def box_defect(x: int, y: int, w: int, h: int, class_id: int = 1) -> dict[str, Any]:
    mask = np.zeros((256, 1600), bool)
    mask[y : y + h, x : x + w] = True
    return {"class_id": class_id, "name": f"c{class_id}", "score": 0.9, "area_px": w * h,
            "mask_rle": rle.encode(mask), "components": [{"bbox": [x, y, w, h], "area_px": w * h}]}  # fmt: skip


# -- outlines -----------------------------------------------------------------------------------


def test_a_box_mask_outlines_as_its_four_corners() -> None:
    (outline,) = mask_contours(box_defect(300, 40, 400, 60)["mask_rle"], 256, 1600)
    corners = sorted(zip(outline[0::2], outline[1::2], strict=True))
    assert corners == [(300, 40), (300, 99), (699, 40), (699, 99)]


def test_outlines_are_bounded_and_a_bad_rle_gives_none() -> None:
    dots = np.zeros((256, 1600), bool)
    dots[::4, ::4] = True  # 25,600 separate specks
    assert len(mask_contours(rle.encode(dots), 256, 1600)) == MAX_CONTOURS
    assert mask_contours("1 5 3", 256, 1600) == []
    assert mask_contours("9999999 5", 256, 1600) == []


# -- the state ----------------------------------------------------------------------------------


def test_every_collection_stays_bounded_whatever_is_fed() -> None:
    state = ViewState(Clock(tick=1.0))  # every strip due to be drawn
    # 4 x 4 strips, each with a 2 x 2 defect: many events, little arithmetic per event.
    tiny = {**box_defect(0, 0, 2, 2), "mask_rle": "1 2 5 2"}

    def tiny_result(camera: str, seq: int) -> dict[str, Any]:
        return {**result(camera, seq, [tiny]), "shape": [4, 4]}

    for n in range(MAX_CAMERAS + 10):
        for seq in range(STRIPS_PER_CAMERA + 5):
            state.frame(f"cam{n}", seq, np.zeros((4, 4), np.uint8))
            state.result(tiny_result(f"cam{n}", 1000 + seq))
    for seq in range(COIL_POINTS):
        state.result(tiny_result("cam0", seq))
    assert state.strips["cam0"][0].defects[0]["contours"]  # the tiny masks were read
    assert len(state.strips) == MAX_CAMERAS + 1 and OTHER in state.strips
    assert all(len(strips) == STRIPS_PER_CAMERA for strips in state.strips.values())
    assert all(len(f) <= FRAMES_PER_CAMERA for f in state._frames.values())
    assert len(state._frames) == MAX_CAMERAS
    assert len(state.coil) == COIL_POINTS
    assert state.totals["results"] == (MAX_CAMERAS + 10) * (STRIPS_PER_CAMERA + 5) + COIL_POINTS


def test_a_strip_gets_its_frames_pixels_and_the_coil_map_its_place() -> None:
    state = ViewState(Clock(tick=1.0))
    state.frame("cam1", 7, np.full((256, 1600), 99, np.uint8))
    meta = {"coil_id": "C1", "position_mm": 1000.0, "strip_length_mm": 160.0}
    state.result(result("cam1", 7, [box_defect(300, 40, 400, 60)], meta))
    state.result(result("cam1", 8, [box_defect(0, 0, 160, 256, 2)]))  # no meta: by seq
    seven, eight = state.strips["cam1"][1], state.strips["cam1"][0]
    assert seven.image is not None and eight.image is None  # 8's frame never came
    assert state.image("cam1", 7) == seven.image and state.image("cam1", 9) is None
    decoded = cv2.imdecode(np.frombuffer(seven.image, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert decoded.shape == (256, 1600) and abs(int(decoded.mean()) - 99) <= 1
    by_mm, by_seq = state.coil
    assert (by_mm["coil"], by_mm["along"], by_mm["unit"]) == ("C1", 1000.0 + 500 * 0.1, "mm")
    assert by_mm["across"] == pytest.approx(70 / 256, abs=1e-3)
    assert (by_seq["coil"], by_seq["along"], by_seq["unit"]) == (None, 8.05, "strip")
    assert state.class_counts["c1"] == {"class_id": 1, "strips": 1, "area_px": 24000}


def test_a_result_claiming_a_huge_strip_shows_its_numbers_without_decoding_its_masks() -> None:
    state = ViewState()
    huge = {**result("cam1", 0, [box_defect(0, 0, 4, 4)]), "shape": [65535, 65535]}
    state.result(huge)  # decoding would allocate 4 GB
    (strip,) = state.strips["cam1"]
    assert strip.defects[0]["contours"] == [] and strip.defects[0]["area_px"] == 16


def test_a_busy_camera_is_drawn_so_often_defects_sooner_and_every_strip_counted() -> None:
    clock = Clock()
    state = ViewState(clock)
    messages: list[dict[str, Any]] = []
    state.listen(messages.append)
    for seq in range(10):  # 10 clean strips at once: the first is drawn
        state.result(result("cam1", seq))
    clock.now += 0.1
    state.result(result("cam1", 10, [box_defect(0, 0, 4, 4)]))  # a defect: drawn after 0.1 s
    state.result(result("cam1", 11, [box_defect(8, 0, 4, 4)]))  # at once again: counted only
    clock.now += 0.3
    state.result(result("cam1", 12))  # clean, 0.3 s after the last drawn: not yet
    clock.now += 0.2
    state.result(result("cam1", 13))  # 0.5 s: drawn
    assert [s.seq for s in state.strips["cam1"]] == [13, 10, 0]
    assert state.totals["results"] == 14 and state.totals["defective"] == 2
    assert len(state.coil) == 2 and state.class_counts["c1"]["strips"] == 2
    assert [m["type"] for m in messages] == ["strip", "strip", "coil", "strip"]
    assert state.frame_due("cam1") is False
    clock.now += 0.1
    assert state.frame_due("cam1") is True


def test_the_banner_names_what_is_wrong() -> None:
    clock = Clock()
    state = ViewState(clock)
    assert state.problems() == [
        "no status from the daemon yet: is it running, and is --source its --publish endpoint?"
    ]
    state.status({"daemon": "line1"})
    assert state.problems() == []
    state.source(True, "tcp://cam1:5555")
    state.camera_link("tcp://cam2:5555", up=False)
    clock.now += 12
    assert state.problems() == [
        "the daemon's status stopped 12 s ago",
        "the daemon lost camera source tcp://cam1:5555",
        "the view cannot reach camera tcp://cam2:5555 (strips show without pixels)",
    ]
    state.status({"daemon": "line1"})
    state.source(False, "tcp://cam1:5555")
    state.camera_link("tcp://cam2:5555", up=True)
    assert state.problems() == []


def test_rates_count_the_last_minute_only() -> None:
    clock = Clock()
    state = ViewState(clock)
    state.count("rejects", 3)
    state.count("missing", 10)
    clock.now += 30
    state.count("rejects")
    assert state.stats()["rates_per_min"] == {"rejects": 4.0, "drops": 0.0, "missing": 10.0}
    clock.now += 45
    assert state.stats()["rates_per_min"]["rejects"] == 1.0
    assert state.stats()["totals"]["rejects"] == 4


def test_a_browser_that_stops_reading_is_let_go_and_the_others_are_not() -> None:
    async def run() -> tuple[Hub, _Client, _Client]:
        hub = Hub()
        slow, fast = _Client(), _Client()
        hub.clients |= {slow, fast}
        for n in range(slow.queue.maxsize + 1):
            hub.fan_out({"type": "stats", "n": n})
            fast.queue.get_nowait()  # this one keeps up
        return hub, slow, fast

    hub, slow, fast = asyncio.run(run())
    assert hub.clients == {fast} and hub.let_go == 1
    assert slow.queue.get_nowait() is None  # its stream ends at once


def test_the_page_needs_no_internet() -> None:
    page = _page()
    # The SVG namespace is a name, never fetched; nothing else may point off this server.
    outside = re.findall(r"https?://[^\s\"'`)]+", page.replace("http://www.w3.org/2000/svg", ""))
    assert outside == []
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # all inline
    assert '"#E69F00"' in page  # the palette went in


# -- the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "8080"], "--listen takes HOST:PORT, e.g. 127.0.0.1:8080; got '8080'"),
        (["--cameras", "cam1:5555"], "is not a ZeroMQ endpoint"),
    ],
)
def test_bad_options_are_refused_with_what_was_wrong(args: list[str], message: str) -> None:
    outcome = CliRunner().invoke(app, ["view", *args])
    assert outcome.exit_code == 2
    assert message in " ".join(outcome.output.split())


def test_a_taken_port_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        outcome = CliRunner().invoke(app, ["view", "--listen", f"127.0.0.1:{port}"])
    assert outcome.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in " ".join(outcome.output.split())


# -- in a real browser --------------------------------------------------------------------------


def _snapshot(web: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/snapshot", timeout=5) as answer:
        return json.loads(answer.read())


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass  # the server is still starting
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def line(tiny_repo: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A camera that binds, a daemon and a view connected to it, all real processes."""
    cam, pub, web = (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}",
                     free_port())  # fmt: skip
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("daemon", "view")}  # noqa: SIM115
    daemon = subprocess.Popen(
        [*EDGE, "run", "--source", cam, "--publish", pub, "--models", str(tiny_repo),
         "--threads", "1"], stderr=logs["daemon"],
    )  # fmt: skip
    view = subprocess.Popen(
        [*EDGE, "view", "--source", pub, "--cameras", cam, "--listen", f"127.0.0.1:{web}"],
        stderr=logs["view"],
    )
    try:
        with FramePublisher(cam) as camera:
            # The daemon's status reached the view, and both are subscribed to the camera.
            _wait(lambda: _snapshot(web)["problems"] == [], 60, "the view to see the daemon")
            assert camera.wait_for_subscriber(10)
            time.sleep(0.5)
            yield {"camera": camera, "web": web, "daemon": daemon, "logs": tmp_path}
    finally:
        for proc in (view, daemon):
            if proc.poll() is None:
                proc.terminate()
        assert view.wait(20) == 0, (tmp_path / "view.log").read_text()
        daemon.wait(30)
        for log in logs.values():
            log.close()


PATCHES = {0: (300, 40, 400, 60), 2: (900, 150, 200, 50), 4: (100, 120, 120, 80)}
# The tiny segmenter: 20 is dark and very dark (classes 1 and 3), 50 dark only.
LEVELS = {0: 20, 2: 50, 4: 20}


def send(camera: FramePublisher, seq: int) -> None:
    strip = np.full((256, 1600), 128, np.uint8)
    if seq in PATCHES:
        x, y, w, h = PATCHES[seq]
        strip[y : y + h, x : x + w] = LEVELS[seq]
    meta = {"coil_id": "C77", "position_mm": 128.0 * seq, "strip_length_mm": 128.0}
    camera.send_image("cam1", seq, strip, meta=meta)


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver not installed (Debian chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _attribute_of_each(browser: Any, css: str, name: str) -> list[str | None]:
    """``name`` of every element matching ``css``, read in one script: the page rebuilds its
    class table and coil map on every status message, so elements found by one WebDriver call
    can be gone by the next (StaleElementReferenceException, seen in CI)."""
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.getAttribute(arguments[1]))",
        css,
        name,
    )


def _screen_pixels_of(screenshot: np.ndarray, rect: dict[str, float], rgb: tuple[int, int, int],
                      width: int, height: int) -> np.ndarray:  # fmt: skip
    """Strip coordinates (x, y) of the screenshot's pixels of colour ``rgb`` inside ``rect``."""
    x0, y0 = round(rect["x"]), round(rect["y"])
    region = screenshot[y0 : y0 + round(rect["height"]), x0 : x0 + round(rect["width"])]
    near = (np.abs(region.astype(int) - np.array(rgb[::-1])) <= 30).all(axis=2)  # BGR
    ys, xs = np.nonzero(near)
    return np.stack([xs * width / rect["width"], ys * height / rect["height"]], axis=1)


@pytest.mark.slow
def test_the_page_shows_strips_outlines_counts_and_a_lost_daemon(
    line: dict[str, Any], browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # Read-only: nothing but GET.
    post = urllib.request.Request(f"http://127.0.0.1:{line['web']}/events", b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=5)
    assert refused.value.code == 405
    browser.get(f"http://127.0.0.1:{line['web']}/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "link").text == "live")
    # Each strip sent once the one before is answered, and DRAW_EVERY_S after: the view
    # draws a camera's strips at most that often, counted from when their results come,
    # so spacing the sends alone let a slow first answer hide the second strip.
    for seq in range(3):
        send(line["camera"], seq)
        WebDriverWait(browser, 30).until(
            lambda d, n=str(seq + 1): d.find_element(By.ID, "count-results").text == n
        )
        time.sleep(DRAW_EVERY_S + 0.1)
    cameras = browser.find_elements(By.CSS_SELECTOR, ".camera")
    assert [c.get_attribute("data-camera") for c in cameras] == ["cam1"]
    strips = cameras[0].find_elements(By.CSS_SELECTOR, ".strip")
    assert [s.get_attribute("data-seq") for s in strips] == ["2", "1", "0"]
    assert [("defective" in s.get_attribute("class")) for s in strips] == [True, False, True]
    outlines = strips[0].find_elements(By.CSS_SELECTOR, "polygon.contour")
    assert [p.get_attribute("data-class") for p in outlines] == ["1"]
    assert sorted(
        p.get_attribute("data-class") for p in strips[2].find_elements(By.CSS_SELECTOR, "polygon")
    ) == ["1", "3"]
    assert not strips[1].find_elements(By.CSS_SELECTOR, "polygon.contour")
    hover = outlines[0].find_element(By.TAG_NAME, "title").get_attribute("textContent")
    assert "score" in hover and "10000 px" in hover  # 200 x 50 px
    assert browser.find_element(By.ID, "count-defective").text == "2"
    assert sorted(_attribute_of_each(browser, "#classes .class-row", "data-class")) == ["1", "3"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#coilmap .coil-defect")) == 3
    assert "C77" in browser.find_element(By.ID, "coiltitle").text
    assert not browser.find_element(By.ID, "banner").is_displayed()

    # The screenshot: the class outlines lie on the edge of the mask the event gave, and
    # the strip's own dark pixels inside it.
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return document.querySelector('.strip img').complete")
    )
    screenshot = cv2.imdecode(np.frombuffer(browser.get_screenshot_as_png(), np.uint8), 1)
    cv2.imwrite("/tmp/view_screenshot.png", screenshot)
    # Class 3's outline is drawn over class 1's where both have the same mask (seq 0).
    for strip, seq, class_id in ((strips[0], 2, 1), (strips[2], 0, 3)):
        rect = strip.rect
        x, y, w, h = PATCHES[seq]
        scale = 1600 / rect["width"]
        found = _screen_pixels_of(screenshot, rect, class_rgb(class_id), 1600, 256)
        assert len(found) > 50, f"class {class_id}'s outline is not on the screenshot"
        margin = 3 * scale + 1  # the 2 px stroke, antialiased
        inside_x = (found[:, 0] >= x - margin) & (found[:, 0] <= x + w + margin)
        inside_y = (found[:, 1] >= y - margin) & (found[:, 1] <= y + h + margin)
        assert (inside_x & inside_y).mean() > 0.98
        assert abs(found[:, 0].min() - x) <= margin and abs(found[:, 0].max() - x - w) <= margin
        assert abs(found[:, 1].min() - y) <= margin and abs(found[:, 1].max() - y - h) <= margin

        def at(sx: float, sy: float, rect: dict = rect, scale: float = scale) -> int:
            return int(
                screenshot[round(rect["y"] + sy / scale), round(rect["x"] + sx / scale)].mean()
            )

        assert at(x + w / 2, y + h / 2) < 65  # the dark patch: the camera's own pixels
        assert 100 < at(x - 60, y + h / 2) < 160  # the mid-grey strip beside it

    # Counts move as strips come, while another "browser" is connected and never reads.
    stalled = socket.create_connection(("127.0.0.1", line["web"]), timeout=5)
    stalled.sendall(b"GET /events HTTP/1.1\r\nHost: edge\r\n\r\n")
    for seq in (3, 4):
        send(line["camera"], seq)
        time.sleep(0.6)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "count-results").text == "5")
    stalled.close()
    assert browser.find_element(By.ID, "count-defective").text == "3"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#coilmap .coil-defect")) == 5

    # The daemon goes away: its status stops, and the banner says so.
    line["daemon"].terminate()
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "banner").is_displayed())
    assert "status stopped" in browser.find_element(By.ID, "banner").text
