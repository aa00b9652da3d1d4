"""`edge bridge mqtt`: pure parts, the sink against a real Mosquitto, and the whole chain
daemon -> bridge process -> Mosquitto -> paho subscriber, including a broker restart."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edge.line.bridges.mqtt_json import (
    BrokerUrl,
    check_template,
    event_json,
    parse_broker_url,
    render_topic,
)
from edge.protocol import FrameHeader, encode_frame
from tests.bridge_fixtures import defective_strip, free_port, wait_until
from tests.conftest import gray_strip
from tests.mosquitto import (
    Mosquitto,
    MqttListener,
    need_mosquitto,
    password_file,
    tls_files,
)

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (edge[mqtt])")

from edge.line.bridges.mqtt import MqttOptions, MqttSink  # noqa: E402  (needs paho)

EDGE = [sys.executable, "-c", "from edge.cli.main import app; app()"]


# -- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", BrokerUrl("broker", 1883, False)),
        ("mqtt://broker:1884", BrokerUrl("broker", 1884, False)),
        ("mqtts://broker", BrokerUrl("broker", 8883, True)),
        ("MQTTS://10.0.0.5:9000/", BrokerUrl("10.0.0.5", 9000, True)),
        ("mqtt://[::1]:1883", BrokerUrl("::1", 1883, False)),
    ],
)
def test_broker_url_parses(url: str, expected: BrokerUrl) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "empty"),
        ("broker:1883", "no scheme"),
        ("tcp://broker:1883", "scheme 'tcp'"),
        ("ws://broker", "scheme 'ws'"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:http", "bad port"),
        ("mqtt://broker:0", "port 0"),
        ("mqtt://broker:70000", "bad port"),
        ("mqtt://broker:", "empty port"),
        ("mqtt://user:secret@broker", "credentials"),
        ("mqtt://broker/edge", "path"),
        ("mqtt://broker?x=1", "query"),
        ("mqtt://[::1", "malformed"),
    ],
)
def test_bad_broker_url_is_named(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="broker URL") as err:
        parse_broker_url(url)
    assert problem in str(err.value)


def test_topic_template_renders_and_makes_values_safe() -> None:
    template = check_template("plant/{daemon}/{camera}/{kind}")
    assert render_topic(template, daemon="d1", camera="cam1", kind="result") == (
        "plant/d1/cam1/result"
    )
    # A camera id with MQTT's separators or wildcards must not add levels or filters.
    assert render_topic(template, daemon="d/1", camera="a+b#", kind="gap") == "plant/d_1/a_b_/gap"
    assert render_topic("{camera}", daemon="", camera="$SYS", kind="") == "_$SYS"
    assert render_topic("x/{daemon}", daemon="", camera="", kind="") == "x/_"


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("edge/{line}/{kind}", "unknown placeholder {line}"),
        ("edge/{}/{kind}", "unknown placeholder {}"),
        ("edge/{0}", "unknown placeholder {0}"),
        ("edge/+/{kind}", "wildcard"),
        ("edge/{kind}/#", "wildcard"),
        ("edge/{kind:>5}", "format spec"),
        ("edge/{kind!r}", "format spec"),
        ("edge/{kind", "malformed"),
        ("$SYS/{kind}", "broker's"),
        ("", "empty"),
    ],
)
def test_bad_topic_template_is_refused(template: str, problem: str) -> None:
    with pytest.raises(ValueError, match="template") as err:
        check_template(template)
    assert problem in str(err.value)


def result_event(seq: int = 3, *, crop: bool = True) -> dict[str, Any]:
    defect: dict[str, Any] = {
        "class_id": 1,
        "name": "dark",
        "score": 0.9,
        "area_px": 6,
        "mask_rle": "2 4 7 1 12 1",
        "components": [{"bbox": [0, 0, 3, 2], "area_px": 6}],
    }
    if crop:
        defect["crop"] = {"bbox": [0, 0, 3, 2], "jpeg": b"\xff\xd8\xff\x00jpeg"}
    return {
        "v": 1,
        "kind": "result",
        "camera": "cam1",
        "seq": seq,
        "ts_ns": 123,
        "shape": (3, 4),
        "defective": True,
        "scores": [0.5, float("nan")],
        "defects": [defect],
        "latency_ms": 1.5,
        "model": {"segmenter": "seg:1:abc"},
        "meta": {"coil_id": "C1", "position_mm": 1200.0, 7: b"raw"},
    }


def test_event_json_keeps_every_field_and_makes_bytes_base64() -> None:
    event = result_event()
    decoded = json.loads(event_json(event))
    assert decoded["kind"] == "result" and decoded["seq"] == 3 and decoded["shape"] == [3, 4]
    assert decoded["scores"] == [0.5, None]  # NaN is not JSON
    (defect,) = decoded["defects"]
    assert defect["mask_rle"] == "2 4 7 1 12 1"
    assert base64.b64decode(defect["crop"]["jpeg"]) == b"\xff\xd8\xff\x00jpeg"
    assert decoded["meta"] == {"coil_id": "C1", "position_mm": 1200.0, "7": "cmF3"}
    assert event["defects"][0]["crop"]["jpeg"] == b"\xff\xd8\xff\x00jpeg"  # input untouched


def test_event_json_without_masks_drops_rle_and_crop_jpeg_only() -> None:
    event = result_event()
    (defect,) = json.loads(event_json(event, masks=False))["defects"]
    assert "mask_rle" not in defect
    assert defect["crop"] == {"bbox": [0, 0, 3, 2]}
    assert defect["area_px"] == 6 and defect["components"]
    assert "mask_rle" in event["defects"][0]  # the caller's event is not changed
    gap = {"v": 1, "kind": "gap", "camera": "cam1", "first_seq": 1, "last_seq": 2, "missing": 2}
    assert json.loads(event_json(gap, masks=False)) == gap


def test_options_refuse_what_cannot_work(tmp_path: Path) -> None:
    broker = parse_broker_url("mqtt://127.0.0.1")
    with pytest.raises(ValueError, match="QoS"):
        MqttOptions(broker, qos=3)
    with pytest.raises(ValueError, match="buffer"):
        MqttOptions(broker, buffer=0)
    with pytest.raises(ValueError, match="mqtts://"):
        MqttOptions(broker, tls_ca=tmp_path / "ca.pem")
    with pytest.raises(ValueError, match="does not exist"):
        MqttOptions(parse_broker_url("mqtts://h"), tls_ca=tmp_path / "ca.pem")
    with pytest.raises(ValueError, match="username"):
        MqttOptions(broker, password="x")
    with pytest.raises(ValueError, match="client id"):
        MqttOptions(broker, client_id="a/b")


# -- the sink against a real broker -----------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    need_mosquitto()
    server = Mosquitto(tmp_path / "mosquitto").start()
    yield server
    server.stop()


@pytest.fixture
def listeners() -> Iterator[Any]:
    made: list[MqttListener] = []

    def make(port: int, topics: list[str], **kw: Any) -> MqttListener:
        listener = MqttListener(port, topics, **kw)
        made.append(listener)
        return listener.wait_subscribed()

    yield make
    for listener in made:
        listener.close()


@pytest.fixture
def sinks() -> Iterator[Any]:
    made: list[MqttSink] = []

    def make(url: str, **kw: Any) -> MqttSink:
        kw.setdefault("client_id", "test-bridge")
        options = MqttOptions(parse_broker_url(url), reconnect_min_s=0.1, reconnect_max_s=0.5, **kw)
        sink = MqttSink(options).start()
        made.append(sink)
        wait_until(sink.client.is_connected, timeout_s=10, what="the sink to connect")
        return sink

    yield make
    for sink in made:
        sink.stop(timeout_s=2)


def status_event(daemon: str = "d1") -> dict[str, Any]:
    return {"v": 1, "kind": "status", "daemon": daemon, "uptime_s": 1.0, "cameras": {}}


def test_events_arrive_on_their_topics_and_status_is_retained(broker, listeners, sinks) -> None:
    listener = listeners(broker.port, ["edge/#"])
    sink = sinks(broker.url)
    sink.take("event/cam1", {"v": 1, "kind": "gap", "camera": "cam1", "first_seq": 1,
                             "last_seq": 1, "missing": 1})  # fmt: skip
    sink.take("status/d1", status_event())
    sink.take("event/cam1", result_event(seq=4))
    sink.take("status/d1", {"v": 1, "kind": "source_lost", "daemon": "d1", "endpoint": "tcp://x",
                            "losses": 1})  # fmt: skip

    def topics() -> list[str]:
        return [t for t, _, _ in listener.on(lambda t: not t.startswith("edge/bridge/"))]

    wait_until(lambda: len(topics()) == 4, timeout_s=10, what="four messages")
    # Before any status {daemon} is the configured default; after, the daemon's own id.
    assert sorted(topics()) == sorted([
        "edge/edge/cam1/gap", "edge/d1/_daemon/status", "edge/d1/cam1/result",
        "edge/d1/_daemon/source_lost",
    ])  # fmt: skip
    ((_, result, retained),) = listener.on(lambda t: t.endswith("/result"))
    assert not retained and result["meta"]["coil_id"] == "C1"
    assert result["defects"][0]["mask_rle"] == "2 4 7 1 12 1"
    assert listener.on(lambda t: t == "edge/bridge/test-bridge/online")[0][1] == "online"

    # A subscriber that connects later gets the last status (retained), and no event.
    late = listeners(broker.port, ["edge/#"])
    wait_until(lambda: late.on(lambda t: t.endswith("/status")), timeout_s=10, what="status")
    ((_, status, retained),) = late.on(lambda t: t.endswith("/status"))
    assert retained and status["daemon"] == "d1"
    assert not late.on(lambda t: t.endswith("/result") or t.endswith("/gap"))


def test_no_masks_option_publishes_without_rle(broker, listeners, sinks) -> None:
    listener = listeners(broker.port, ["edge/+/+/result"])
    sink = sinks(broker.url, masks=False, qos=0)
    sink.take("event/cam1", result_event())
    wait_until(lambda: listener.on(lambda t: True), timeout_s=10, what="the result")
    ((_, result, _),) = listener.on(lambda t: True)
    assert "mask_rle" not in result["defects"][0] and "jpeg" not in result["defects"][0]["crop"]


def test_buffer_holds_events_while_the_broker_is_away_and_counts_the_rest(
    broker, listeners, sinks
) -> None:
    listener = listeners(broker.port, ["edge/#"], client_id="keeper", persistent=True)
    buffer, away = 20, 50
    sink = sinks(broker.url, buffer=buffer)
    for seq in range(5):
        sink.take("event/cam1", result_event(seq, crop=False))

    def seqs() -> list[int]:
        return [body["seq"] for _, body, _ in listener.on(lambda t: t.endswith("/result"))]

    wait_until(lambda: len(seqs()) == 5 and sink._prune() == 0, timeout_s=10, what="5 acked")
    broker.stop()
    wait_until(lambda: not sink.client.is_connected(), timeout_s=10, what="the disconnect")
    for seq in range(5, 5 + away):
        sink.take("event/cam1", result_event(seq, crop=False))
    sink.take("status/d1", status_event())  # held aside: not in the buffer, not dropped
    assert sink.stats()["dropped"] == away - buffer
    broker.start()

    def final_dropped() -> dict[str, Any] | None:
        got = listener.on(lambda t: t == "edge/bridge/test-bridge/dropped")
        return got[-1][1] if got and got[-1][1]["dropped"] == away - buffer else None

    wait_until(lambda: len(set(seqs())) == 5 + buffer, timeout_s=15, what="the buffered events")
    stats = wait_until(final_dropped, timeout_s=10, what="the dropped count")
    assert sorted(set(seqs())) == list(range(5 + buffer)), "the first N after the outage"
    assert stats["reasons"] == {"buffer_full": away - buffer}
    sent = 5 + away
    assert stats["dropped"] == sent - len(set(seqs()))
    wait_until(lambda: listener.on(lambda t: t.endswith("/status")), timeout_s=10, what="status")


def test_qos0_has_no_buffer_and_counts_what_it_drops(broker, sinks) -> None:
    sink = sinks(broker.url, qos=0)
    broker.stop()
    wait_until(lambda: not sink.client.is_connected(), timeout_s=10, what="the disconnect")
    for seq in range(3):
        sink.take("event/cam1", result_event(seq))
    assert sink.stats()["reasons"] == {"not_connected": 3}


def test_a_broker_that_never_answers_never_blocks_take() -> None:
    """A TCP peer that takes the connection but never says CONNACK (a hung broker): the
    daemon's events must not back up behind it; what does not fit is counted."""
    import socket

    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)  # the kernel completes the handshake; nobody ever reads
        url = f"mqtt://127.0.0.1:{mute.getsockname()[1]}"
        sink = MqttSink(MqttOptions(parse_broker_url(url), client_id="t", buffer=50)).start()
        try:
            time.sleep(0.2)  # paho has connected its socket and sent CONNECT
            started = time.monotonic()
            for seq in range(250):
                sink.take("event/cam1", result_event(seq))
            assert time.monotonic() - started < 2.0
            assert sink.stats()["accepted"] == 50
            assert sink.stats()["reasons"] == {"buffer_full": 200}
        finally:
            assert sink.stop(timeout_s=0.5) == 50  # never acknowledged, and said so


def test_tls_and_password_are_used_and_a_wrong_password_gets_nothing_through(
    tmp_path: Path, listeners, sinks
) -> None:
    need_mosquitto()
    ca, cert, key = tls_files(tmp_path / "tls")
    passwords = password_file(tmp_path / "auth", "line7", "s3cret")
    tls_port = free_port()
    server = Mosquitto(
        tmp_path / "mosquitto",
        extra=f"password_file {passwords}\n"
        f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
    ).start()
    try:
        listener = listeners(server.port, ["edge/#"])
        url = f"mqtts://127.0.0.1:{tls_port}"
        sink = sinks(url, tls_ca=ca, username="line7", password="s3cret")
        sink.take("event/cam1", result_event())
        wait_until(
            lambda: listener.on(lambda t: t == "edge/edge/cam1/result"), timeout_s=10, what="event"
        )

        wrong = MqttSink(
            MqttOptions(parse_broker_url(url), client_id="intruder", tls_ca=ca,
                        username="line7", password="guess", reconnect_min_s=0.1,
                        reconnect_max_s=0.2)
        ).start()  # fmt: skip
        try:
            wait_until(lambda: wrong.refused >= 2, timeout_s=10, what="refusals, retried")
            assert not wrong.client.is_connected() and wrong.connects == 0
            assert not listener.on(lambda t: "intruder" in t)
        finally:
            wrong.stop(timeout_s=1)
    finally:
        server.stop()


# -- the bridge process -----------------------------------------------------------------------


def bridge_process(source: str, broker_url: str, *args: str) -> subprocess.Popen[str]:
    cmd = [*EDGE, "bridge", "mqtt", "--source", source, "--broker", broker_url]
    cmd += ["--reconnect-min", "0.1", "--reconnect-max", "0.5", *args]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ})


def stop_process(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def online(listener: MqttListener, client_id: str) -> list[Any]:
    return [p for _, p, _ in listener.on(lambda t: t == f"edge/bridge/{client_id}/online")]


def test_last_will_fires_when_the_bridge_process_dies(broker, listeners) -> None:
    listener = listeners(broker.port, ["edge/bridge/#"])
    proc = bridge_process(f"tcp://127.0.0.1:{free_port()}", broker.url, "--client-id", "doomed")
    try:
        wait_until(lambda: online(listener, "doomed") == ["online"], timeout_s=30, what="online")
        proc.send_signal(signal.SIGKILL)
        wait_until(
            lambda: online(listener, "doomed")[-1:] == ["offline"], timeout_s=10, what="the will"
        )
    finally:
        stop_process(proc)


def test_cli_stops_cleanly_on_sigterm(broker, listeners) -> None:
    listener = listeners(broker.port, ["edge/bridge/#"])
    proc = bridge_process(f"tcp://127.0.0.1:{free_port()}", broker.url, "--client-id", "calm")
    try:
        wait_until(lambda: online(listener, "calm") == ["online"], timeout_s=30, what="online")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert f"-> {broker.url}" in err
        wait_until(lambda: online(listener, "calm")[-1:] == ["offline"], timeout_s=10, what="off")
    finally:
        stop_process(proc)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--broker", "tcp://127.0.0.1:1883"], "scheme 'tcp'"),
        (["--broker", "mqtt://127.0.0.1:99999"], "bad port"),
        (["--topic", "edge/{line}"], "unknown placeholder {line}"),
        (["--topic", "edge/#"], "wildcard"),
        (["--tls-ca", "/etc/hostname"], "mqtts://"),
        (["--password", "x"], "username"),
        (["--qos", "3"], "or equal to 2"),
    ],
)
def test_cli_names_bad_input(args: list[str], problem: str) -> None:
    from edge.cli.main import app

    result = CliRunner().invoke(app, ["bridge", "mqtt", *args], prog_name="edge")
    assert result.exit_code == 2, result.output
    assert problem in result.output


# -- end to end: daemon + camera + Mosquitto + bridge process + subscriber ---------------------


def send_frame(camera: Any, seq: int, *, defective: bool) -> None:
    image = defective_strip() if defective else gray_strip()
    meta = {"coil_id": "C1", "position_mm": seq * 250.0, "strip_length_mm": 250.0}
    header = FrameHeader("cam1", seq, time.time_ns(), "raw", image.shape, meta=meta)
    camera.send_multipart([bytes(p) for p in encode_frame(header, image.tobytes())])


@pytest.mark.parametrize("buffer", [None, 5])
def test_end_to_end_every_event_once_and_a_broker_restart_survived(
    start_daemon, camera_socket, broker, listeners, buffer: int | None
) -> None:
    daemon = start_daemon()
    listener = listeners(broker.port, ["edge/#"], client_id="hmi", persistent=True)
    args = ["--client-id", "e2e", *(["--buffer", str(buffer)] if buffer else [])]
    proc = bridge_process(daemon.server.publish_endpoint, broker.url, *args)
    try:

        def results() -> list[dict[str, Any]]:
            return [b for _, b, _ in listener.on(lambda t: t.endswith("/cam1/result"))]

        # A status through the bridge: its subscription to the daemon is live.
        wait_until(
            lambda: listener.on(lambda t: t.endswith("/_daemon/status")),
            timeout_s=30,
            what="a daemon status through the bridge",
        )
        camera = camera_socket(daemon.source)
        for seq in range(8):
            send_frame(camera, seq, defective=seq % 2 == 1)
            if buffer is not None:  # the buffer also holds what awaits the broker's ack
                wait_until(lambda: len(results()) > seq, timeout_s=30, what=f"result {seq}")  # noqa: B023
        wait_until(lambda: len(results()) >= 8, timeout_s=30, what="8 results")
        time.sleep(0.3)  # a duplicate would come right behind
        got = results()
        assert sorted(e["seq"] for e in got) == list(range(8)), "each event exactly once"
        for event in got:
            assert event["v"] == 1 and event["camera"] == "cam1"
            assert event["meta"] == {
                "coil_id": "C1", "position_mm": event["seq"] * 250.0, "strip_length_mm": 250.0
            }  # fmt: skip
            assert event["defective"] == (event["seq"] % 2 == 1)
            assert set(event) >= {"ts_ns", "shape", "scores", "defects", "latency_ms", "model"}
            for defect in event["defects"]:
                assert defect["mask_rle"] and defect["components"] and defect["area_px"] > 0
        # Field for field what the daemon published (as JSON: tuples as lists, bytes base64).
        published = daemon.subscriber.wait_for(
            lambda ev: sum(e["kind"] == "result" for e in ev) >= 8
        )
        by_seq = {e["seq"]: json.loads(event_json(e)) for e in published if e["kind"] == "result"}
        assert {e["seq"]: e for e in got} == by_seq
        status_topics = {t for t, _, _ in listener.on(lambda t: t.endswith("/status"))}
        daemon_id = daemon.subscriber.wait_for_status()["daemon"]
        assert status_topics == {f"edge/{daemon_id}/_daemon/status"}
        assert {t.split("/")[1] for t, _, _ in listener.on(lambda t: t.endswith("/result"))} == {
            daemon_id
        }

        # The broker restarts mid-run: what the bridge buffered meanwhile arrives after, and
        # what did not fit in its buffer is counted.
        broker.stop()
        outage = range(8, 16)
        for seq in outage:
            send_frame(camera, seq, defective=seq % 2 == 1)
        daemon.subscriber.wait_for(lambda ev: sum(e["kind"] == "result" for e in ev) >= 16)
        broker.start()

        def totals_after_restart() -> dict[str, Any] | None:
            got = [b for _, b, _ in listener.on(lambda t: t == "edge/bridge/e2e/dropped")]
            if not got or got[-1]["connects"] < 2:
                return None
            delivered = {e["seq"] for e in results()} - set(range(8))
            return got[-1] if len(delivered) + got[-1]["dropped"] == len(outage) else None

        totals = wait_until(totals_after_restart, timeout_s=15, what="the events and totals")
        delivered = sorted({e["seq"] for e in results()} - set(range(8)))
        if buffer is None:
            assert delivered == list(outage) and totals["dropped"] == 0, "nothing lost"
        else:
            # The first ones of the outage, as many as the buffer held (a status or two sent
            # just before the broker went may take a place); the rest counted as dropped.
            assert delivered == list(range(8, 8 + len(delivered)))
            assert buffer - 2 <= len(delivered) <= buffer
            assert totals["reasons"] == {"buffer_full": len(outage) - len(delivered)}
        # QoS 1 is at least once: a message the broker took just before it stopped, but
        # whose acknowledgement was lost, may come twice. Never more than that.
        assert len(results()) - 8 - len(delivered) <= 1
        # Online again. The bridge sends "online" from its housekeeping round after it
        # connects, and holds it while paho's queue is full of the outage's events: the last
        # word may come after the totals (a clean-clone CI run read "offline" here once).
        wait_until(
            lambda: online(listener, "e2e")[-1:] == ["online"],
            timeout_s=10,
            what="the bridge's online flag again",
        )
    finally:
        stop_process(proc)


def test_cli_without_paho_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from edge.cli.main import app

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "paho" else real(name, *a)
    )
    result = CliRunner().invoke(app, ["bridge", "mqtt"], prog_name="edge")
    assert result.exit_code == 2
    assert "paho-mqtt is not installed: pip install 'edge[mqtt]'" in result.output


def test_events_lost_before_the_bridge_are_counted_with_its_own_drops() -> None:
    sink = MqttSink(MqttOptions(parse_broker_url("mqtt://127.0.0.1:1"), client_id="t"))
    sink.lost_on_the_way(3, "lost between the daemon and edge bridge mqtt")
    stats = sink.stats()
    assert stats["dropped"] == 3 and stats["reasons"] == {"lost_before_bridge": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("qos = 5\n", "qos: Input should be less than or equal to 2"),
        ("brokr = 'mqtt://x'\n", "brokr: Extra inputs are not permitted"),
        ("source = 'cam:5556'\n", "source:"),
    ],
)
def test_a_bad_config_file_is_named_with_its_key(tmp_path: Path, text: str, message: str) -> None:
    from edge.cli.main import app

    config = tmp_path / "mqtt.toml"
    config.write_text(text)
    result = CliRunner().invoke(app, ["bridge", "mqtt", "-c", str(config)])
    assert result.exit_code == 2, result.output
    assert f"error: {config}: " in result.output and message in " ".join(result.output.split())


def test_the_config_file_gives_options_and_flags_win(tmp_path: Path) -> None:
    from edge.line.bridges.config import load_mqtt_config

    config = tmp_path / "mqtt.toml"
    config.write_text(
        "broker = 'mqtts://broker:8883'\nusername = 'line7'\npassword = 's3cret'\n"
        "tls_ca = 'ca.pem'\nqos = 2\nmasks = false\n"
    )
    cfg = load_mqtt_config(config, qos=0)
    assert (cfg.broker, cfg.username, cfg.password, cfg.qos, cfg.masks) == (
        "mqtts://broker:8883", "line7", "s3cret", 0, False
    )  # fmt: skip
    assert cfg.tls_ca == tmp_path / "ca.pem"  # relative to the file
