"""The README and docs/ run as written: their offline Python blocks execute, every `llm4gen ...` command names a real
command and real options, every script command a real script and real flags, and every file or link they cite (and
the research notes cite) is in the repository.

A ```python block that needs a GPU, a hub download or a long run is fenced ```python notest and only compiled."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
USER_PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
              ROOT / "comfyui" / "README.md"]
RESEARCH_NOTES = sorted((ROOT / "research").rglob("*.md"))
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", flags=re.S | re.M)


def _blocks(page: Path, language: str) -> list[tuple[str, str]]:
    """(info string, code) of each fenced block of ``language`` in ``page``."""
    return [(info.strip(), code) for info, code in FENCE.findall(page.read_text(encoding="utf-8"))
            if info.strip().split(" ")[0] == language]


def _python_blocks() -> list[tuple[str, int, str]]:
    out = []
    for page in USER_PAGES:
        for k, (info, code) in enumerate(_blocks(page, "python")):
            if "notest" not in info.split():
                out.append((page.relative_to(ROOT).as_posix(), k, code))
    return out


def test_readme_python_example_runs(tmp_path, monkeypatch):
    (info, code), *_ = _blocks(README, "python")  # the first block is the offline example
    assert "notest" not in info
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "llm4gen.png").is_file()
    assert (tmp_path / "my-llm4gen" / "model_index.json").is_file()
    assert namespace["fused"].prompt_embeds.shape[1] > 77


@pytest.mark.parametrize("page, k, code", [b for b in _python_blocks() if b[0] != "README.md" or b[1] != 0],
                         ids=lambda v: str(v)[:40] if isinstance(v, str) else str(v))
def test_docs_python_blocks_run_as_written(page, k, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks write their files where they run
    exec(compile(code, f"{page} (python block {k})", "exec"), {"__name__": "__docs__"})


def test_notest_python_blocks_at_least_compile():
    blocks = [(page, code) for page in USER_PAGES for info, code in _blocks(page, "python") if "notest" in info.split()]
    assert blocks  # the authors' weights on a GPU
    for page, code in blocks:
        compile(code, str(page), "exec")


# ---------------------------------------------------------------------- shell commands
def _shell_commands(pages: list[Path]) -> list[tuple[str, list[str]]]:
    """(page, argv) of each command line in the pages' bash blocks: continuation lines joined, comments and
    environment assignments dropped; `$VAR` arguments are left out (they stand for flags set elsewhere)."""
    out = []
    for page in pages:
        for _, code in _blocks(page, "bash"):
            text = re.sub(r"\\\n", " ", code)
            for line in text.splitlines():
                line = line.split(" #", 1)[0].strip()
                if not line or line.startswith("#") or re.match(r"^[A-Z0-9_]+=", line):
                    continue
                try:
                    argv = shlex.split(line)
                except ValueError as err:  # an unclosed quote
                    raise AssertionError(f"{page.name}: cannot parse {line!r}: {err}") from None
                out.append((page.relative_to(ROOT).as_posix(), [a for a in argv if not a.startswith("$")]))
    return out


def _llm4gen_argv(argv: list[str]) -> list[str] | None:
    """The arguments after `llm4gen`, also under `accelerate launch ... -m llm4gen`; None for other commands."""
    if argv[:1] == ["llm4gen"]:
        return argv[1:]
    if "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["llm4gen"]:
        return argv[argv.index("-m") + 2:]
    return None


# scripts that hand their arguments to an `llm4gen` command
SCRIPT_COMMANDS = {"benchmarks/shapes_quality.py": ["bench", "quality"]}


def _check_llm4gen(page: str, args: list[str]) -> None:
    """``args`` (after `llm4gen`) name a command and only options it has."""
    import typer

    from llm4gen.cli import app

    command, rest = typer.main.get_command(app), list(args)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):  # a group
        name = rest.pop(0)
        assert name in command.commands, f"{page}: `llm4gen {' '.join(args)}`: no command {name!r}"
        command = command.commands[name]
    options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
    for token in rest:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in options, f"{page}: `llm4gen {' '.join(args)}`: {command.name} has no option {flag}"


def test_every_llm4gen_command_in_the_docs_is_a_real_command_with_real_options():
    checked = 0
    for page, argv in _shell_commands(USER_PAGES + RESEARCH_NOTES):
        args = _llm4gen_argv(argv)
        if args is not None:
            _check_llm4gen(page, args)
            checked += 1
    assert checked > 30


def test_every_script_command_in_the_docs_names_a_real_script_and_its_flags():
    checked = 0
    for page, argv in _shell_commands(USER_PAGES + RESEARCH_NOTES):
        scripts = [a for a in argv if re.fullmatch(r"(benchmarks|research/[\w/]+|tests)/\w+\.py", a)]
        if not scripts or argv[0] not in ("python", "python3"):
            continue
        script = ROOT / scripts[0]
        assert script.is_file(), f"{page}: {scripts[0]} does not exist"
        if scripts[0] in SCRIPT_COMMANDS:
            _check_llm4gen(page, [*SCRIPT_COMMANDS[scripts[0]], *argv[argv.index(scripts[0]) + 1:]])
            checked += 1
            continue
        source = script.read_text(encoding="utf-8")
        for token in argv[argv.index(scripts[0]) + 1:]:
            if token.startswith("--"):
                flag = token.split("=", 1)[0]
                assert f'"{flag}"' in source, f"{page}: {scripts[0]} takes no {flag}"
        checked += 1
    assert checked > 20


# ---------------------------------------------------------------------- files and links
def _expand(pattern: str) -> list[str]:
    """Shell-style brace expansion: "a{.json,.png}" -> ["a.json", "a.png"] (no nesting)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    return [x for part in m.group(1).split(",") for x in _expand(pattern[: m.start()] + part + pattern[m.end():])]


def test_every_result_file_and_link_the_docs_and_notes_cite_is_in_the_repository():
    assert _expand("a{1,2}b{x,y}") == ["a1bx", "a1by", "a2bx", "a2by"]
    missing, cited = [], 0
    for page in USER_PAGES + RESEARCH_NOTES:
        text = page.read_text(encoding="utf-8")
        # paths from the repository root: committed results and images (not those a note places in git history:
        # `git show REV:path`, or "... (in git history at REV)")
        for m in re.finditer(r"(?:benchmarks/results|research/shapesworld/results|docs)/[\w./{},*-]+\.\w+", text):
            if text[m.start() - 1] == ":" or "git history" in text[m.end():m.end() + 80]:
                continue
            for name in _expand(m.group().rstrip(".")):
                cited += 1
                if not (list(ROOT.glob(name)) if "*" in name else (ROOT / name).is_file()):
                    missing.append(f"{page.relative_to(ROOT)}: {name}")
        # markdown links relative to the page
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            cited += 1
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)}: link {target}")
    assert cited > 100
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_the_readme_stays_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 320


def test_every_test_the_docs_name_exists():
    """docs/reliability.md names the test behind each claim: those tests (and test files) exist."""
    tests = ROOT / "tests"
    defined = {m for f in tests.glob("test_*.py") for m in re.findall(r"^def (test_\w+)", f.read_text(), re.M)}
    named = 0
    for page in USER_PAGES:
        for name, is_file in re.findall(r"\b(test_\w+)(\.py)?", page.read_text(encoding="utf-8")):
            named += 1
            if is_file:
                assert (tests / f"{name}.py").is_file(), f"{page.name} names tests/{name}.py, which does not exist"
            else:
                assert name in defined, f"{page.name} names the test {name}, which does not exist"
    assert named > 10
