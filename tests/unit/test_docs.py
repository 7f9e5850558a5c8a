"""README.md and docs/*.md: every relative link resolves, and every ``maas`` command shown exists with its options.

A command is a ``maas ...`` (or ``.venv/bin/maas ...``) that starts a line of a code block (after a ``$`` prompt or
a shell separator too) or an inline code span; ``a|b`` alternatives are checked each. Its words must name a
command of ``scripts.cli.COMMANDS`` (the longest match); a following lowercase word (``serve start``, ``deploy
kserve``) must be accepted by that command's parser; and every ``--option`` must appear in the help of that
sub-command or of the command. The help texts come from ``maas WORDS --help`` run in a child process, so the
commands' imports stay out of the test process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from scripts.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MAAS = re.compile(r"\s*(?:\$\s*)?(?:\.venv/bin/)?maas\s+(.*)")  # maas, .venv/bin/maas, $ maas, $maas
SHELL_SEPARATOR = re.compile(r"&&|\|\||;|\s\|\s|\s#|\s>")


# ---- links -------------------------------------------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but - and spaces dropped, spaces -> -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found, seen = set(), {}
    for line in FENCE.sub("", text).splitlines():
        if heading := re.match(r"#{1,6}\s+(.*)", line):
            name = slug(heading.group(1))
            found.add(f"{name}-{seen[name]}" if name in seen else name)  # GitHub numbers repeated headings
            seen[name] = seen.get(name, 0) + 1
    return found


def link_errors(page: Path) -> list[str]:
    errors = []
    for target in LINK.findall(INLINE_CODE.sub("", FENCE.sub("", page.read_text()))):
        if re.match(r"(https?|mailto):", target):
            continue
        path, _, anchor = target.partition("#")
        file = page.parent / path if path else page
        if not file.exists():
            errors.append(f"{page.name}: link {target}: {file} does not exist")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            errors.append(f"{page.name}: link {target}: no heading #{anchor} in {file.name}")
    return errors


# ---- maas commands -----------------------------------------------------------------------------------------------
def shown_commands(text: str) -> list[str]:
    """The words after ``maas`` of every command that starts a line of a code block (continued lines joined), a
    command after a shell separator, or an inline code span; ``a|b`` alternatives among its words spelt out."""
    lines = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    commands = []
    for snippet in lines + INLINE_CODE.findall(FENCE.sub("", text)):
        for part in SHELL_SEPARATOR.split(snippet):
            if found := MAAS.match(part):
                commands += alternatives(found.group(1).replace("\\|", "|").split())
    return commands


def alternatives(tokens: list[str]) -> list[str]:
    """``serve start|stop`` -> ``serve start``, ``serve stop`` (in the first three words, options excluded)."""
    for i, token in enumerate(tokens[:3]):
        if "|" in token and not token.startswith("-"):
            return [alt for word in token.split("|") for alt in alternatives([*tokens[:i], word, *tokens[i + 1 :]])]
    return [" ".join(tokens)]


def parse(command: str) -> tuple[tuple[str, ...] | None, str | None, list[str]]:
    """(command words or None, a sub-command word or None, the --options) of ``maas COMMAND``."""
    tokens = [token.strip("[](),'\"") for token in command.split()]
    words = next((w for w in sorted(COMMANDS, key=len, reverse=True) if tuple(tokens[: len(w)]) == w), None)
    if words is None and tokens and tokens[0].startswith("-"):
        words = ()  # maas --help: the top level
    rest = tokens[len(words or ()) :]
    sub = rest[0] if words and rest and re.fullmatch(r"[a-z]+", rest[0]) else None
    return words, sub, [token.split("=")[0] for token in rest if token.startswith("--")]


HELP: dict[tuple[str, ...], str | None] = {}
CHILD = """
import contextlib, io, json, sys
from scripts.cli import main
texts = []
for words in json.loads(sys.argv[1]):
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main([*words, "--help"])
    except SystemExit as exc:
        code = exc.code
    except Exception:
        code = 1
    texts.append(out.getvalue() if code in (0, None) else None)
print(json.dumps(texts))
"""


def help_texts(keys: list[tuple[str, ...]]) -> dict[tuple[str, ...], str | None]:
    """``maas WORDS --help`` for each key (None: refused). Two commands' modules register clashing protobuf files, so
    one that fails after others ran in the same process is asked again; the first of a process fails on its own."""
    todo = [key for key in dict.fromkeys(keys) if key not in HELP]
    while todo:
        run = subprocess.run([sys.executable, "-c", CHILD, json.dumps(todo)], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        texts = json.loads(run.stdout.splitlines()[-1])
        HELP.update({key: text for key, text in zip(todo, texts, strict=True) if text is not None})
        HELP.setdefault(todo[0], None)
        todo = [key for key in todo if key not in HELP]
    return {key: HELP[key] for key in keys}


def command_errors(commands: list[str]) -> list[str]:
    parsed = [(command, *parse(command)) for command in commands]
    keys = [k for _, words, sub, _ in parsed if words is not None for k in [words, *([(*words, sub)] if sub else [])]]
    helps = help_texts(keys)
    errors = []
    for command, words, sub, options in parsed:
        if words is None:
            errors.append(f"maas {command}: no such command")
            continue
        texts = [helps[words]] + ([helps[(*words, sub)]] if sub else [])
        if sub and texts[1] is None:
            errors.append(f"maas {command}: maas {' '.join(words)} does not take {sub!r}")
        for option in options:
            if not any(re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text or "") for text in texts):
                errors.append(f"maas {command}: maas {' '.join(words)} has no option {option}")
    return errors


# ---- the tests ---------------------------------------------------------------------------------------------------
def test_relative_links_resolve():
    assert [error for page in PAGES for error in link_errors(page)] == []


def test_maas_commands_shown_exist_with_their_options():
    shown = {command: page.name for page in PAGES for command in shown_commands(page.read_text())}
    assert len(shown) > 20
    assert command_errors(list(shown)) == []


def test_the_checker_finds_commands_in_code_only():
    text = (
        "Run `maas build a --format onnx` or `maas-triton-key`; maas buidl in prose is not a command.\n\n"
        "| `maas bench int8\\|ab` | a table cell |\n\n"
        "```bash\n.venv/bin/maas serve stop && .venv/bin/maas serve start  # restart\n"
        "$ maas train text \\\n    --data x.csv\nscripts/cli.py   the maas command\n```\n"
    )
    assert shown_commands(text) == [
        "serve stop", "serve start", "train text --data x.csv", "build a --format onnx", "bench int8", "bench ab"
    ]  # fmt: skip


def test_the_checker_refuses_what_does_not_exist():
    assert command_errors(["build artifacts/x --format onnx [--only triton]", "serve status --json", "--help"]) == []
    errors = command_errors(["buidl artifacts/x", "build artifacts/x --no-such-flag", "serve strat", "bench nosuch"])
    assert errors == [
        "maas buidl artifacts/x: no such command",
        "maas build artifacts/x --no-such-flag: maas build has no option --no-such-flag",
        "maas serve strat: maas serve does not take 'strat'",
        "maas bench nosuch: no such command",
    ]


def test_the_link_checker_uses_github_anchors(tmp_path):
    assert slug("Reliability: health, self-healing, retries") == "reliability-health-self-healing-retries"
    assert slug("Static int8 (calibrated): `onnx_int8_static`") == "static-int8-calibrated-onnx_int8_static"
    (tmp_path / "a.md").write_text("# A page\n\n## Part\n\n```\n# not a heading\n```\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#part) [ok](https://x.org/y) [bad](a.md#not-a-heading) [bad](c.md) `[code](c.md)`\n")
    assert link_errors(page) == [
        "b.md: link a.md#not-a-heading: no heading #not-a-heading in a.md",
        f"b.md: link c.md: {tmp_path / 'c.md'} does not exist",
    ]
