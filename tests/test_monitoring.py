"""The monitoring that ships (monitoring/): alert rules under promtool, and every Grafana
dashboard query run against a real Prometheus scraping a live daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.protocol import FrameHeader, encode_frame
from tests.conftest import free_port, gray_strip
from tests.daemon_process import DaemonProcess

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
RULES = MONITORING / "prometheus" / "edge-alerts.yml"
RULE_TESTS = MONITORING / "prometheus" / "edge-alerts.test.yml"
DASHBOARD = MONITORING / "grafana" / "edge-dashboard.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian prometheus; .ci/run installs it)"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian prometheus; .ci/run installs it)"
)
# What the issue asks the rules to watch, by the alert that does.
ALERTS = {
    "EdgeDaemonDown",
    "EdgeInferenceStalled",
    "EdgeNotReady",
    "EdgeSourceLost",
    "EdgeFramesDropped",
    "EdgeFramesRejected",
    "EdgeFramesMissing",
    "EdgeReloadRefused",
}


def alert_names() -> set[str]:
    return set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.MULTILINE))


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


# -- the rules ----------------------------------------------------------------------------------


@needs_promtool
def test_the_rules_are_valid_and_their_unit_tests_pass() -> None:
    for args in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        done = subprocess.run(
            [PROMTOOL, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout + done.stderr


def test_every_alert_asked_for_exists_and_has_a_case_where_it_fires() -> None:
    assert alert_names() == ALERTS
    tests = RULE_TESTS.read_text()
    for name in ALERTS:
        firing = rf"alertname: {name}\n\s+exp_alerts:\n\s+- exp_labels:"
        assert re.search(firing, tests), f"{name} has no test case in which it fires"
        assert f"alertname: {name}, exp_alerts: []" in tests, f"{name} has no quiet case"


@needs_promtool
def test_the_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    # A mutation: the rules' tests must fail when a rule changes what it means.
    shutil.copy(RULE_TESTS, tmp_path)
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("> 0.01", "> 0.5"))
    done = subprocess.run(
        [PROMTOOL, "test", "rules", RULE_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "EdgeFramesRejected" in done.stdout + done.stderr


def test_the_dashboard_selects_the_documented_job_and_instance_variable() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    for title, expr in queries:
        assert 'job="edge"' in expr and 'instance=~"$instance"' in expr, title


# -- a real Prometheus scraping a live daemon ---------------------------------------------------


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    answer = _get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.fixture
def scraped_daemon(tiny_repo: Path, tmp_path: Path) -> Iterator[tuple[str, DaemonProcess]]:
    """A daemon with traffic of every kind, and a Prometheus scraping it each second."""
    metrics_at = f"127.0.0.1:{free_port()}"
    # A --source nothing serves: edge_source_up has a series (0), as for a lost camera.
    lost = f"tcp://127.0.0.1:{free_port()}"
    with DaemonProcess(tiny_repo, "--metrics", metrics_at, "--source", lost) as daemon:
        listener = daemon.listener().start(first_within_s=60)
        cam = daemon.camera()
        defective = gray_strip()
        defective[10:30, 100:150] = 20
        for seq, strip in [(0, defective), (1, gray_strip()), (3, defective)]:  # 2: a gap
            header = FrameHeader("cam1", seq, time.time_ns(), "raw", strip.shape)
            cam.send_multipart(encode_frame(header, strip.tobytes()))
        cam.send_multipart([b"frame/cam1", b"\xc1", b""])  # a reject
        assert listener.wait_for(lambda: len(listener.events) >= 5, 30), daemon.stderr
        port = free_port()
        config = tmp_path / "prometheus.yml"
        shutil.copy(RULES, tmp_path)
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{RULES.name}]\n"
            "scrape_configs:\n"
            f"  - job_name: edge\n    static_configs: [{{targets: ['{metrics_at}']}}]\n"
        )
        server = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            yield f"http://127.0.0.1:{port}", daemon
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)


@needs_prometheus
@pytest.mark.slow
def test_every_dashboard_query_returns_series_from_a_live_scrape(
    scraped_daemon: tuple[str, DaemonProcess],
) -> None:
    prometheus, daemon = scraped_daemon

    def scrapes() -> float:
        try:
            found = _query(prometheus, 'count_over_time(up{job="edge"}[1m])')
        except OSError:  # Prometheus still starting
            return 0.0
        return float(found[0]["value"][1]) if found else 0.0

    # rate() needs two samples in its window: wait until three scrapes of the daemon are in.
    deadline = time.monotonic() + 60
    while scrapes() < 3:
        assert time.monotonic() < deadline, "Prometheus never scraped the daemon 3 times in 60 s"
        time.sleep(0.5)
    assert _query(prometheus, 'up{job="edge"}')[0]["value"][1] == "1"
    empty = []
    for title, expr in dashboard_queries():
        series = _query(prometheus, expr.replace("$instance", ".*"))
        if not series:
            empty.append(title)
    assert not empty, f"dashboard panels with no series: {empty}"
    defects = _query(prometheus, 'edge_defects_total{job="edge", defect_class="dark"}')
    assert [s["value"][1] for s in defects] == ["2"]
    rules = _get(f"{prometheus}/api/v1/rules")["data"]["groups"][0]["rules"]
    assert {r["name"] for r in rules} == ALERTS
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    assert daemon.poll() is None
