"""Every default the docs state for a config key is the default the code has.

The statements are found, not listed: the `| key | default | meaning |` tables, a backticked
key followed by ``(default X)``, ``default X`` or a bare value ``(X)`` (``rcvhwm`` messages
(200)), ``key = value`` (default), the TOML examples (README, docs, systemd/edge.toml) whose
comment says ``default``, and the ``(default: X)`` of every ``edge run --help`` line. A new
key documented in one of these shapes is checked without touching this file; a stated default
that cannot be read, or a key the config does not have, fails with the file and line.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from edge.daemon.config import Config, shipped_models
from edge.line.bridges.config import BridgeConfig, MqttBridgeConfig

ROOT = Path(__file__).resolve().parents[1]

# Which configuration each document describes; None: not one of these (docs/models.md is about
# a model's config.toml, whose keys and defaults are another schema's).
SCHEMAS: dict[str, type[BaseModel] | None] = {
    "docs/plc.md": BridgeConfig,
    "docs/models.md": None,
    "docs/integration.md": MqttBridgeConfig,  # its TOML example is edge bridge mqtt -c
}
TOML_FILES = ["systemd/edge.toml"]  # whole files that are config examples
# A default the docs give in words: the phrase, and the value it means.
PHRASES: dict[str, Any] = {
    "the reference models shipped with the package": shipped_models(),
    "the shipped reference models": shipped_models(),
    "the host name": socket.gethostname(),
    "hostname": socket.gethostname(),
    "refuse": False,
}
_SIZES = {"B": 1, "bytes": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_SECONDS = {"ms": 1e-3, "s": 1.0, "min": 60.0}
_WORDS: dict[str, Any] = {"off": None, "none": None, "true": True, "false": False}

_KEY = r"[a-z][a-z0-9_]*"
_FLAG = r"--[a-z][a-z0-9-]*"
_BETWEEN = r"(?: [a-z]+){0,2}"  # `rcvhwm` messages (200), `--publish` endpoint (default ...)
# `key` (default X) / `key` words (default: X) / `key` default X
_DEFAULT = re.compile(
    rf"`(?P<key>{_KEY}|{_FLAG})`(?:(?P<between>{_BETWEEN}),? \(default\b|,? default\b)"
)
# `key` words (X): a statement only when X looks like a value
_PAREN = re.compile(rf"`(?P<key>{_KEY})`{_BETWEEN} \((?P<text>[^)]*)\)")
_VALUE_LIKE = re.compile(r"""[0-9"`-]|(off|none)\b""")
# `key = value` (default)
_ASSIGN = re.compile(rf"`(?P<key>{_KEY}) = (?P<text>[^`]+)` \(default\)")
# key = value  # comment  (a TOML example line; commented out too: "# key = value")
_TOML_LINE = re.compile(rf"^(?:#\s*)?(?P<key>{_KEY})\s*=\s*(?P<rest>.+)$")
_NUMBER = re.compile(r"-?\d[\d_]*(?:\.\d+)?")
_UNIT = re.compile(r"\s*(?P<unit>[A-Za-z]+)\b")
_BARE = re.compile(r"[A-Za-z][\w.:/*@-]*")
_ENV = re.compile(r"\$(?P<name>[A-Z][A-Z0-9_]*)")  # $STATE_DIRECTORY: what the environment says


@dataclass(frozen=True)
class Stated:
    """One default as a document states it."""

    where: str  # file:line
    schema: type[BaseModel]
    key: str
    text: str  # the value as written, then whatever follows it
    whole: bool = False  # the text is the value and nothing else (a table cell)

    def __str__(self) -> str:
        return f"{self.where} {self.key}"


@dataclass(frozen=True)
class Example:
    """One `key = value` line of a TOML example config."""

    where: str
    schema: type[BaseModel]
    key: str
    value: Any
    comment: str

    def __str__(self) -> str:
        return f"{self.where} {self.key}"


class Unreadable(ValueError):
    pass


def _run_flags() -> dict[str, str]:
    """``--max-batch`` -> ``max_batch``: the `edge run` flags, named like the keys they set."""
    from typer.main import get_command

    from edge.cli.main import app

    keys = {"source": "sources", "bind_source": "bind_sources"}
    run = get_command(app).commands["run"]  # type: ignore[attr-defined]
    return {opt: keys.get(p.name, p.name) for p in run.params for opt in p.opts}


RUN_FLAGS = _run_flags()


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _schema(path: Path) -> type[BaseModel] | None:
    return SCHEMAS.get(str(path.relative_to(ROOT)), Config)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def scan() -> tuple[list[Stated], list[Example]]:
    stated: list[Stated] = []
    examples: list[Example] = []
    for path in documents():
        schema = _schema(path)
        if schema is None:
            continue
        name = str(path.relative_to(ROOT))
        fence: str | None = None
        table = False  # inside a | key | default | table
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{name}:{number}"
            if line.startswith("```"):
                fence = None if fence is not None else line[3:].strip()
                continue
            if fence is not None:
                if fence == "toml":
                    examples += _toml_line(where, schema, line)
                continue
            if line.startswith("|"):
                cells = _cells(line)
                if cells[:2] == ["key", "default"]:
                    table = True
                    continue
                if table and not set(cells[0]) <= set("-: "):
                    key = cells[0].strip("`")
                    stated.append(Stated(where, schema, key, cells[1], whole=True))
                    continue
            else:
                table = False
            stated += _prose(where, schema, line)
    for name in TOML_FILES:
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            examples += _toml_line(f"{name}:{number}", Config, line)
    stated += [s for e in examples for s in _example_default(e)]
    return stated, examples


def _prose(where: str, schema: type[BaseModel], line: str) -> list[Stated]:
    found = []
    for m in _DEFAULT.finditer(line):
        key = m["key"]
        if key.startswith("--"):
            if schema is not Config or key not in RUN_FLAGS:
                continue  # another command's flag (`edge bench --duration`), not a config key
            key = RUN_FLAGS[key]
        elif m["between"] and key not in schema.model_fields:
            continue  # "the `edge` executable (default: ...)": about the word after it
        found.append(Stated(where, schema, key, line[m.end() :].lstrip(":").strip()))
    for m in _ASSIGN.finditer(line):
        found.append(Stated(where, schema, m["key"], m["text"]))
    for m in _PAREN.finditer(line):
        text = m["text"].strip()
        if m["key"] in schema.model_fields and _VALUE_LIKE.match(text):
            found.append(Stated(where, schema, m["key"], text, whole=True))
    return found


def _toml_line(where: str, schema: type[BaseModel], line: str) -> list[Example]:
    m = _TOML_LINE.match(line.strip())
    if m is None:
        return []
    try:
        value = tomllib.loads(f"v = {m['rest']}")["v"]
    except tomllib.TOMLDecodeError as err:
        if line.lstrip().startswith("#"):
            return []  # prose in a comment that happens to hold an "="
        raise ValueError(f"{where}: not a TOML line: {line!r} ({err})") from None
    comment = m["rest"].rpartition("#")[2] if "#" in m["rest"] else ""
    return [Example(where, schema, m["key"], value, comment.strip())]


def _example_default(example: Example) -> list[Stated]:
    """``# default: X``: X is the default; ``# (default)``/``# default``: this value is."""
    m = re.search(r"\bdefault\b:?\s*(.*)", example.comment)
    if m is None:
        return []
    text = m[1].strip()
    if not text or text.startswith(")"):
        text = _literal_text(example.value)
    return [Stated(example.where, example.schema, example.key, text)]


def _literal_text(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


def parse(text: str, key: str) -> tuple[Any, str]:
    """A stated value at the start of ``text`` -> (value, what follows it)."""
    text = text.strip()
    for phrase, value in PHRASES.items():
        if text.startswith(phrase):
            return value, text[len(phrase) :]
    if text.startswith("`"):
        inner, sep, rest = text[1:].partition("`")
        if not sep:
            raise Unreadable(f"unclosed backtick in {text!r}")
        try:
            return tomllib.loads(f"v = {inner}")["v"], rest
        except tomllib.TOMLDecodeError:
            value, tail = parse(inner, key)
            if tail.strip():
                raise Unreadable(f"{inner!r} is not one value") from None
            return value, rest
    if text.startswith('"'):
        inner, sep, rest = text[1:].partition('"')
        if not sep:
            raise Unreadable(f"unclosed quote in {text!r}")
        return inner, rest
    if m := _NUMBER.match(text):
        number: float = float(m[0]) if "." in m[0] else int(m[0].replace("_", ""))
        rest = text[m.end() :]
        if (u := _UNIT.match(rest)) and (u["unit"] in _SIZES or u["unit"] in _SECONDS):
            rest = rest[u.end() :]
            number = _with_unit(number, u["unit"], key)
        return number, rest
    if m := _ENV.match(text):
        return os.environ.get(m["name"]) or None, text[m.end() :]
    if m := _BARE.match(text):
        word = m[0]
        return _WORDS.get(word.lower(), word), text[m.end() :]
    raise Unreadable(f"cannot read a value in {text!r}")


def _with_unit(number: float, unit: str, key: str) -> float:
    if unit in _SIZES:
        return number * _SIZES[unit]
    seconds = number * _SECONDS[unit]
    if key.endswith("_ms"):
        return seconds * 1000
    if key.endswith("_s"):
        return seconds
    raise Unreadable(f"a time in {unit} for {key}, which is not in seconds (_s) or ms (_ms)")


STATED, EXAMPLES = scan()


def test_the_scan_finds_the_statements_it_is_meant_to() -> None:
    """Guards the scanner itself: if it read nothing, every check below would pass."""
    found = {(s.where.split(":")[0], s.key) for s in STATED}
    for expected in [
        ("docs/operations.md", "max_message_bytes"),  # the keys table
        ("docs/operations.md", "rcvhwm"),  # the buffers table: `rcvhwm` messages (200)
        ("docs/operations.md", "queue_size"),
        ("docs/operations.md", "overload"),  # `overload = "drop-oldest"` (default)
        ("docs/protocol.md", "max_message_bytes"),  # (default N MiB)
        ("docs/protocol.md", "status_interval_s"),
        ("docs/protocol.md", "publish"),  # the `--publish` endpoint (default `tcp://...`)
        ("docs/plc.md", "hold_s"),
        ("systemd/edge.toml", "models"),  # default: the reference models shipped ...
    ]:
        assert expected in found, expected
    assert sum(s.where.startswith("docs/operations.md") and s.whole for s in STATED) >= 10
    assert {e.where.split(":")[0] for e in EXAMPLES} >= {
        "README.md",
        "docs/plc.md",
        "systemd/edge.toml",
    }


def _default(schema: type[BaseModel], key: str) -> Any:
    return schema.model_fields[key].get_default(call_default_factory=True)


def _same(stated: Any, default: Any) -> bool:
    if isinstance(default, bool) and stated is None:
        stated = False  # "off"
    if isinstance(default, Path) and isinstance(stated, str):
        stated = Path(stated)
    if isinstance(stated, int | float) and not isinstance(stated, bool):
        return isinstance(default, int | float) and math.isclose(stated, default)
    return stated == default


@pytest.mark.parametrize("stated", STATED, ids=str)
def test_a_stated_default_is_the_configs(stated: Stated) -> None:
    schema = stated.schema
    assert stated.key in schema.model_fields, (
        f"{stated.where}: `{stated.key}` is not a {schema.__name__} key"
    )
    try:
        value, rest = parse(stated.text, stated.key)
    except Unreadable as err:
        pytest.fail(f"{stated.where}: the stated default of `{stated.key}` is unreadable: {err}")
    rest = rest.strip()
    ends = rest == "" if stated.whole else rest == "" or rest[0] in ",;:)"
    assert ends, f"{stated.where}: `{stated.key}`: cannot read {stated.text!r} as one value"
    default = _default(schema, stated.key)
    written = stated.text.strip()[: len(stated.text.strip()) - len(rest)].strip()
    assert _same(value, default), (
        f"{stated.where}: the docs say `{stated.key}` defaults to {written!r} "
        f"(= {value!r}); {schema.__name__} says {default!r}"
    )


def _is_path(schema: type[BaseModel], key: str) -> bool:
    annotation = schema.model_fields[key].annotation
    return annotation is Path or Path in get_args(annotation)


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_an_example_config_line_is_a_valid_setting(example: Example) -> None:
    schema = example.schema
    assert example.key in schema.model_fields, (
        f"{example.where}: `{example.key}` is not a {schema.__name__} key"
    )
    if _is_path(schema, example.key):
        return  # checked for existence on this machine: an example's path is somewhere else
    base: dict[str, Any] = {"sources": ["tcp://cam1:5555"]} if schema is Config else {}
    try:
        schema.model_validate({**base, example.key: example.value})
    except ValidationError as err:
        pytest.fail(f"{example.where}: `{example.key} = {example.value!r}` is refused: {err}")


def _help_defaults() -> list[tuple[str, str, str]]:
    from typer.main import get_command

    from edge.cli.main import app

    found = []
    for param in get_command(app).commands["run"].params:  # type: ignore[attr-defined]
        m = re.search(r"\(default: ([^)]*)\)", getattr(param, "help", None) or "")
        if m:
            found.append((param.opts[0], RUN_FLAGS[param.opts[0]], m[1]))
    return found


@pytest.mark.parametrize(("flag", "key", "text"), _help_defaults(), ids=lambda v: str(v))
def test_edge_run_help_states_the_configs_defaults(flag: str, key: str, text: str) -> None:
    assert key in Config.model_fields, f"edge run {flag}: `{key}` is not a Config key"
    try:
        value, rest = parse(text, key)
    except Unreadable as err:
        pytest.fail(f"edge run {flag} --help: the default is unreadable: {err}")
    rest = rest.strip()
    ends = rest == "" or rest[0] in ",;:)"
    assert ends, f"edge run {flag} --help: cannot read {text!r} as one value"
    default = _default(Config, key)
    assert _same(value, default), f"edge run {flag} --help says {text!r}; Config says {default!r}"


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("32 MiB", "max_message_bytes", 32 * 1024 * 1024),
        ("33554432", "max_message_bytes", 33554432),
        ("10 s", "drain_timeout_s", 10.0),
        ("5 ms", "max_wait_ms", 5.0),
        ("off", "metrics", None),
        ("none", "pid_file", None),
        ('"drop-oldest"', "overload", "drop-oldest"),
        ('`"drop-oldest"`', "overload", "drop-oldest"),
        ("`tcp://127.0.0.1:5556`, local only", "publish", "tcp://127.0.0.1:5556"),
        ("the host name", "daemon_id", socket.gethostname()),
        ("$EDGE_TEST_UNSET_VARIABLE, else off", "state_dir", None),
    ],
)
def test_stated_values_are_read_like_a_person_means_them(text: str, key: str, value: Any) -> None:
    assert _same(parse(text, key)[0], value)


def test_an_unreadable_default_is_an_error() -> None:
    with pytest.raises(Unreadable):
        parse("(see below)", "metrics")
    with pytest.raises(Unreadable):
        parse("3 s", "max_batch")
