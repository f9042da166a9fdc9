"""Every command and flag a message or hint tells the user to run exists (issue 12, fault 3).

The hints are read from the source (every ``hint=`` argument and ``NoClusterError``'s default),
so a new hint is checked without anyone listing it here; each ``shapcluster ...`` command it
names must answer ``--help``, and each ``--flag`` must be listed by that command's help.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shapcluster.cli import app

PACKAGE = Path(__file__).resolve().parents[2] / "shapcluster"
# Programs other than ours whose flags a hint may name (`aws sso login --profile X`).
FOREIGN = {"aws", "ssh", "ssh-keyscan", "ssh-keygen", "ssh-add", "docker", "pip", "git", "ray"}
SUBCOMMANDS = {"creds": {"refresh"}, "serve": {"up", "status", "down"}}
runner = CliRunner()


def _text(node: ast.AST) -> str:
    """The literal text of a string expression; f-string fields and names become ``{}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp):
        return _text(node.left) + _text(node.right)
    if isinstance(node, ast.IfExp):
        return _text(node.body) + " " + _text(node.orelse)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join":
        return " ".join(_text(a) for a in node.args)
    return " {} "


def hints() -> list[tuple[str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            values: list[ast.AST] = []
            if isinstance(node, ast.Call):
                values += [k.value for k in node.keywords if k.arg == "hint"]
            if isinstance(node, ast.arguments):
                names = [a.arg for a in node.args + node.kwonlyargs]
                defaults = [None] * (len(node.args) - len(node.defaults)) + list(node.defaults)
                defaults += list(node.kw_defaults)
                values += [d for n, d in zip(names, defaults, strict=True) if n == "hint" and d is not None]
            for value in values:
                text = _text(value)
                if text.strip(" {}"):
                    found.append((f"{path.relative_to(PACKAGE.parent)}:{value.lineno}", text))
    return found


def commands_in(text: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """(command path, flags) for every ``shapcluster ...`` mention, plus ((), flags) for flags that
    follow no program at all; flags of foreign programs are left out."""
    mentions: list[tuple[tuple[str, ...], list[str]]] = []
    current: list[str] | None = None
    words = re.findall(r"[A-Za-z0-9][\w.-]*|--[a-z][a-z-]*|[`();:!?]|\.(?=\s|$)", text)
    orphans: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "shapcluster" and i + 1 < len(words) and re.fullmatch(r"[a-z][a-z-]*", words[i + 1]):
            path = [words[i + 1]]
            if path[0] in SUBCOMMANDS and i + 2 < len(words) and words[i + 2] in SUBCOMMANDS[path[0]]:
                path.append(words[i + 2])
            current = []
            mentions.append((tuple(path), current))
            i += 1 + len(path)
            continue
        if word in FOREIGN:
            current = ["<foreign>"]
        elif word in {"`", "(", ")", ";", ".", ":", "!", "?"}:
            current = None
        elif word.startswith("--"):
            if current is None:
                orphans.append(word)
            elif current[:1] != ["<foreign>"]:
                current.append(word)
        i += 1
    if orphans:
        mentions.append(((), orphans))
    return mentions


def _help(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, f"`shapcluster {' '.join(path)} --help` failed:\n{result.output}"
    return result.output


ALL_COMMANDS = [
    ("up",),
    ("sync",),
    ("status",),
    ("down",),
    ("submit",),
    ("jobs",),
    ("logs",),
    ("creds", "refresh"),
    ("serve", "up"),
    ("serve", "status"),
    ("serve", "down"),
]


@pytest.mark.parametrize(("where", "text"), hints(), ids=[w for w, _ in hints()])
def test_every_hint_names_commands_and_flags_that_exist(where: str, text: str) -> None:
    for path, flags in commands_in(text):
        if path:
            help_text = _help(path)
            for flag in flags:
                assert flag in help_text, f"{where}: `shapcluster {' '.join(path)}` has no {flag}: {text}"
        else:  # a flag named without its command: some command (or the root) must have it
            every = _help(()) + "".join(_help(p) for p in ALL_COMMANDS)
            for flag in flags:
                assert flag in every, f"{where}: no shapcluster command has {flag}: {text}"


def test_the_hint_collector_sees_the_known_hints() -> None:
    texts = [t for _, t in hints()]
    assert any("shapcluster up" in t for t in texts)
    assert commands_in("run `shapcluster logs {} --follow` or --nope") == [
        (("logs",), ["--follow"]),
        ((), ["--nope"]),
    ]
    assert commands_in("Renew it (e.g. `aws sso login --profile x`)") == []
