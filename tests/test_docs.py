"""Every code block and command of README.md and docs/ is executed or loaded, nothing is run:

- ``python`` blocks are compiled, and every name they import from metakd exists;
- ``yaml`` blocks are parsed and loaded as run files (``RunConfig.from_dict``; a block of
  DistillConfig keys through ``DistillConfig.from_dict``);
- ``bash`` blocks are split into commands: each ``metakd ...`` line (also after ``-m metakd`` in a
  launcher, and ``python benchmarks/X.py``, ``python -m metakd.X``) is parsed by the argparse parser
  the command itself builds (``parse_args`` is stopped right after parsing), a ``configs/`` file it
  names must exist, ``python -m pytest`` must be the test command of ``.ci/run``, and ``pip install``
  extras must exist in setup.cfg; any other program is an error until this file learns it;
- ``text`` blocks (and blocks without a language) are output: skipped, but they must hold no command;
- inline commands in the prose (`` `metakd bench quality --seeds 0` ``) are parsed like block lines.

A failure names the page, the block's first line and the command.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import importlib
import re
import shlex
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PYTHON, YAML, SHELL, OUTPUT = ("python", "py"), ("yaml", "yml"), ("bash", "sh", "shell"), ("text", "output", "")
# programs a shell block may use that have nothing to check
UNCHECKED = {"python3 -m venv", ".", "source", "cd", "wait", "done", "tail", "tensorboard", "export", "echo"}
COMMAND_START = re.compile(r"^\s*(\$ )?(metakd|python3?|pip|mkdocs|torchrun|accelerate)\s")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    body: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.lang or 'no language'} block)"


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (indented fences in list items too)."""
    out, open_fence = [], None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if open_fence is None:
            m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", line)
            if m:
                open_fence, indent, start, lang, body = m.group(2), len(m.group(1)), n, m.group(3).lower(), []
        elif line.strip() == open_fence or (line.strip().startswith(open_fence) and not line.strip(open_fence[0]).strip()):
            out.append(Block(_rel(path), start, lang, "\n".join(body) + "\n"))
            open_fence = None
        else:
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
    assert open_fence is None, f"{_rel(path)}:{start}: unclosed code block"
    return out


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


def _prose(path: Path) -> str:
    """The page with its fenced blocks blanked (line numbers kept)."""
    text = path.read_text(encoding="utf-8").splitlines()
    for b in blocks(path):
        for i in range(b.line - 1, b.line + b.body.count("\n") + 1):
            text[i] = ""
    return "\n".join(text)


# --- python ---------------------------------------------------------------------------------------

def check_python(block: Block) -> None:
    tree = compile(block.body, str(block), "exec", ast.PyCF_ONLY_AST)
    compile(tree, str(block), "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "metakd":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")  # a submodule, or ImportError
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "metakd":
                    importlib.import_module(alias.name)


# --- yaml -----------------------------------------------------------------------------------------

def check_yaml(block: Block) -> None:
    from metakd.config import DistillConfig
    from metakd.run import RunConfig

    values = yaml.safe_load(block.body)
    assert isinstance(values, dict), f"a YAML block is a run file or a part of one (a mapping), got {values!r}"
    run_keys = {f.name for f in fields(RunConfig)}
    distill_keys = {f.name for f in fields(DistillConfig)}
    if set(values) <= run_keys:
        RunConfig.from_dict(values)
    elif set(values) <= distill_keys:
        DistillConfig.from_dict(values)
    else:
        RunConfig.from_dict(values)  # raises the did-you-mean error for the unknown key


# --- shell ----------------------------------------------------------------------------------------

class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.namespace = namespace


@pytest.fixture
def parse_only(monkeypatch):
    """Make every ArgumentParser.parse_args stop the program right after it parsed (raising _Parsed)."""
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)


def _parse(entry, argv: list[str], what: str, capsys) -> argparse.Namespace:
    """Call ``entry(argv)`` (a main function) until its parser has parsed argv."""
    try:
        entry(argv)
    except _Parsed as done:
        return done.namespace
    except SystemExit as exc:
        err = capsys.readouterr().err.strip().splitlines()
        raise AssertionError(f"{what!r}: the parser refused it (exit {exc.code}): {err[-1] if err else ''}") from None
    raise AssertionError(f"{what!r}: returned without parsing its arguments")


def _ci_commands() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _extras() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return set(cfg["options.extras_require"])


def commands(body: str) -> list[list[str]]:
    """The simple commands of a shell snippet: continuation lines joined, comments dropped, split at
    ``&&``, ``||``, ``;``, ``&`` and ``|``; a ``for VAR in A ...; do`` loop's ``$VAR`` becomes A."""
    loop: dict[str, str] = {}
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        cmd: list[str] = []
        for tok in [*lex, ";"]:
            if tok in ("&&", "||", ";", "&", "|", ";;"):
                if cmd and cmd[0] == "for" and len(cmd) >= 4 and cmd[2] == "in":
                    loop[cmd[1]] = cmd[3]
                elif cmd:
                    out.append(cmd)
                cmd = []
            elif not cmd and tok in ("do", "then"):
                continue
            else:
                for var, value in loop.items():
                    tok = tok.replace("${" + var + "}", value).replace("$" + var, value)
                cmd.append(tok)
    return [c for c in out if c]


def check_command(cmd: list[str], capsys) -> None:
    from metakd import cli

    while cmd and re.match(r"^[A-Za-z_]\w*=", cmd[0]):  # VAR=value prefixes
        cmd = cmd[1:]
    line = " ".join(cmd)
    if "metakd" in cmd and cmd[0] != "metakd" and cmd[cmd.index("metakd") - 1] == "-m":  # launchers
        cmd = cmd[cmd.index("metakd"):]
    if cmd[0] == "metakd":
        ns = _parse(cli.main, cmd[1:], line, capsys)
        config = getattr(ns, "config", None)
        if isinstance(config, str) and config.startswith("configs/"):
            assert (ROOT / config).is_file(), f"{line!r}: {config} does not exist"
        return
    if cmd[0] in ("python", "python3") and len(cmd) > 1:
        if cmd[1].startswith("benchmarks/"):
            script = ROOT / cmd[1]
            assert script.is_file(), f"{line!r}: {cmd[1]} does not exist"
            module = re.search(r"from (metakd\.bench\.\w+) import main", script.read_text()).group(1)
            _parse(importlib.import_module(module).main, cmd[2:], line, capsys)
            return
        if cmd[1:3] == ["-m", "pytest"]:
            assert line in _ci_commands(), f"{line!r} is not the test command of .ci/run ({_ci_commands()})"
            return
        if cmd[1] == "-m" and cmd[2].startswith("metakd."):
            _parse(importlib.import_module(cmd[2]).main, cmd[3:], line, capsys)
            return
        if cmd[1:3] == ["-m", "venv"]:
            return
        if cmd[1].startswith("results/runs/") and cmd[1].endswith(".py"):  # a study's one-off script, kept with its runs
            script = ROOT / cmd[1]
            assert script.is_file(), f"{line!r}: {cmd[1]} does not exist"
            compile(script.read_text(), str(script), "exec")
            return
    if cmd[0] == "pip" and len(cmd) > 1 and cmd[1] == "install":
        for spec in cmd[2:]:
            m = re.match(r"^\.\[([\w,]+)\]$", spec)
            if m:
                missing = set(m.group(1).split(",")) - _extras()
                assert not missing, f"{line!r}: no extra {sorted(missing)} in setup.cfg"
        return
    if cmd[0] == "mkdocs":
        assert (ROOT / "mkdocs.yml").is_file() and cmd[1:2] in (["build"], ["serve"]), line
        return
    if cmd[0] in UNCHECKED or " ".join(cmd[:3]) in UNCHECKED:
        return
    raise AssertionError(f"{line!r}: tests/test_docs.py has no check for {cmd[0]!r} commands (add one)")


def check_shell(block: Block, capsys) -> None:
    cmds = commands(block.body)
    assert cmds, "a shell block without a command"
    for cmd in cmds:
        check_command(cmd, capsys)


def check_output(block: Block) -> None:
    for line in block.body.splitlines():
        assert not COMMAND_START.match(line), f"a command in an output block ({line.strip()!r}): mark the block bash"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[f"{b.page}:{b.line}:{b.lang or 'none'}" for b in ALL_BLOCKS])
def test_block(block, parse_only, capsys):
    try:
        if block.lang in PYTHON:
            check_python(block)
        elif block.lang in YAML:
            check_yaml(block)
        elif block.lang in SHELL:
            check_shell(block, capsys)
        elif block.lang in OUTPUT:
            check_output(block)
        else:
            raise AssertionError(f"unknown block language {block.lang!r}: use python, yaml, bash, or text for output")
    except Exception as exc:
        pytest.fail(f"{block}: {type(exc).__name__}: {exc}", pytrace=False)


# --- commands in the prose ------------------------------------------------------------------------

INLINE = re.compile(r"`(metakd (?:bench|distill|finetune-teacher|compress)\b[^`]*|python3? (?:benchmarks/|-m metakd\.)[^`]*)`")


def inline_commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) for each complete command in an inline code span: ``metakd bench NAME ...``,
    ``metakd distill|finetune-teacher|compress CONFIG ...``, ``python benchmarks/...``,
    ``python -m metakd.X ...``; bare references (``metakd distill``, ``metakd bench NAME``) are not commands."""
    prose = _prose(path)
    out = []
    for m in INLINE.finditer(prose):
        text = " ".join(m.group(1).split())
        words = text.split()
        if words[0] == "metakd":
            if words[1] == "bench" and (len(words) < 3 or words[2].isupper()):
                continue  # `metakd bench`, `metakd bench NAME`: references, not commands
            if words[1] != "bench" and len(words) < 3:
                continue
        out.append((prose.count("\n", 0, m.start()) + 1, text))
    return out


@pytest.mark.parametrize("page", PAGES, ids=[_rel(p) for p in PAGES])
def test_inline_commands(page, parse_only, capsys):
    failures = []
    for line, text in inline_commands(page):
        try:
            for cmd in commands(text):
                check_command(cmd, capsys)
        except Exception as exc:
            failures.append(f"{_rel(page)}:{line}: `{text}`: {exc}")
    assert not failures, "\n".join(failures)


def test_the_checks_catch_mistakes(parse_only, capsys):
    """The checks above fail on a wrong flag, a missing config, a missing script and a bad import."""
    bad = [["metakd", "bench", "quality", "--no-such-flag"], ["metakd", "distill", "configs/missing.yaml"],
           ["python", "benchmarks/missing.py"], ["metakd", "bench", "nonexistent"], ["python", "-m", "pytest"],
           ["pip", "install", "-e", ".[nope]"], ["rm", "-rf", "x"]]
    for cmd in bad:
        with pytest.raises(AssertionError):
            check_command(cmd, capsys)
    check_command(["metakd", "bench", "quality", "--seeds", "0,1"], capsys)
    with pytest.raises(ImportError):
        check_python(Block("x.md", 1, "python", "from metakd import no_such_name\n"))
    with pytest.raises(Exception, match="did you mean"):
        check_yaml(Block("x.md", 1, "yaml", "data: x.csv\ntemprature: 2\n"))
    assert commands("for lr in 3e-4 1e-3; do\n  metakd bench quality --set distill.student_lr=$lr &\ndone; wait\n") == [
        ["metakd", "bench", "quality", "--set", "distill.student_lr=3e-4"], ["done"], ["wait"]]


def test_readme_is_a_five_minute_read():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"


def test_readme_headline_table_is_the_studys():
    """Each row of the README's five-regime table is the row of docs/studies/five-regimes.md (links aside)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    study = (ROOT / "docs" / "studies" / "five-regimes.md").read_text(encoding="utf-8")
    rows = [re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line) for line in readme.splitlines()
            if line.startswith("| SST-2") or line.startswith("| [")]
    study_rows = [line for line in study.splitlines() if line.startswith("| ") and "Δ" not in line
                  and not line.startswith("|---")]
    assert rows == study_rows
