"""The README and the docs say what the code does: their Python examples run, their ``interp-tl`` commands
parse and validate, every study's page exists with its current options table, and their links resolve.

A ```python block preceded by ``<!-- not run: reason -->`` is left out (say why in the comment)."""

import dataclasses
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from interp_tl.cli import build_parser, configs
from interp_tl.studies import STUDIES

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON_BLOCK = re.compile(r"(<!-- not run: [^>]+-->\s*\n)?```python\n(.*?)```", re.S)
#: Link targets another helper is writing (the retrained model's card); drop each once it exists.
PENDING: set[str] = set()


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def python_blocks() -> list[tuple[str, str]]:
    """``(page:line, code)`` of every ```python block that is not marked ``not run``."""
    blocks = []
    for page in PAGES:
        text = page.read_text("utf-8")
        for match in PYTHON_BLOCK.finditer(text):
            if match.group(1) is None:
                blocks.append((f"{_name(page)}:{text[:match.start()].count(chr(10)) + 1}", match.group(2)))
    return blocks


def test_readme_python_example_runs(capsys):
    text = (ROOT / "README.md").read_text("utf-8")
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "layer    z_pre" in out and "gap" in out


@pytest.mark.parametrize(("where", "code"), [b for b in python_blocks() if not b[0].startswith("README.md")],
                         ids=lambda value: value if ":" in str(value) and "\n" not in str(value) else "")
def test_docs_python_examples_run(where, code):
    exec(compile(code, where, "exec"), {})


def cli_commands() -> list[tuple[str, str]]:
    """``(page:line, command)`` of every ``interp-tl ...`` command in a code block of the README or the docs."""
    found = []
    for page in PAGES:
        fenced = False
        for number, line in enumerate(page.read_text("utf-8").splitlines(), 1):
            if line.startswith("```"):
                fenced = not fenced
                continue
            if not (fenced or line.startswith("    ")):
                continue
            for part in line.split("#", 1)[0].split(";"):
                if part.strip().startswith("interp-tl "):
                    found.append((f"{_name(page)}:{number}", part.strip()))
    return found


def test_the_docs_have_commands():
    commands = cli_commands()
    assert len(commands) > 20
    assert {c.split()[1] for _, c in commands if not c.split()[1].startswith("-")} >= {*STUDIES, "all", "head"}


@pytest.mark.parametrize(("where", "command"), cli_commands())
def test_every_command_parses_and_its_settings_validate(where, command):
    """The CLI's own parser and the config checks (no model is loaded, nothing is run)."""
    argv = shlex.split(command)[1:]
    if "--help" in argv or "--version" in argv:
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args(argv)
        assert done.value.code == 0, where
        return
    configs(build_parser().parse_args(argv))  # SystemExit(2) or BadInputError on a bad command


def test_the_command_check_can_fail():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["alignment", "--no-such-flag"])
    with pytest.raises(Exception, match="unknown language"):
        configs(build_parser().parse_args(["alignment", "--langs", "zh", "xx"]))


def _render_options():
    spec = importlib.util.spec_from_file_location("render_options", ROOT / "docs" / "render_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_study_has_its_page_with_the_current_options(name):
    study = STUDIES[name]
    page = ROOT / study.docs
    assert study.docs == f"docs/studies/{name}.md" and page.is_file()
    text = page.read_text("utf-8")
    assert _render_options().render(text, study.config) == text, "run `python docs/render_options.py`"
    for field in dataclasses.fields(study.config):
        assert f"`--{field.name.replace('_', '-')}" in text, field.name
    for section in ("## Question", "## Options", "## Numbers on the default model", "## What the research script"):
        assert section in text, section


def test_links_resolve():
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text("utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue
            path = (page.parent / target).resolve()
            if not path.exists() and _name(path) not in PENDING:
                missing.append(f"{_name(page)} -> {target}")
    assert missing == []


def test_readme_is_one_screen_plus_set_up_and_runs_what_ci_runs():
    text = (ROOT / "README.md").read_text("utf-8")
    assert len(text.splitlines()) <= 150
    ci = (ROOT / ".ci" / "run").read_text("utf-8").strip().splitlines()[-1]
    assert f"    {ci}\n" in text
    assert '    python -m pip install torch==2.13.0 -e ".[dev]" && interp-tl all --out results\n' in text


def test_a_block_marked_not_run_is_left_out():
    text = "```python\nrun()\n```\n<!-- not run: needs a GPU -->\n```python\nskipped()\n```\n"
    assert [m.group(2) for m in PYTHON_BLOCK.finditer(text) if m.group(1) is None] == ["run()\n"]
