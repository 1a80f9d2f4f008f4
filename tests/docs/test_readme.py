"""The README and docs/ say what runs: their marked commands run as written, links resolve.

**How a block is marked runnable.** A fenced code block whose info string is
``bash runnable`` is run by `test_runnable_block_runs_as_written`; ``bash runnable slow``
runs it under the pytest `slow` marker (blocks that train with the real offline encoder
take minutes). A block without the word ``runnable`` is never run (commands that need
MEANTIME, a GPU, Slurm or hours). GitHub shows ``bash runnable`` as an ordinary bash block.

Each runnable block runs with ``bash -euo pipefail`` in a fresh temporary folder holding:

- ``configs/`` and ``pipeline/demo_data/``, copied from this checkout, so
  ``xel-cli run --config configs/demo.toml`` works and writes under ``artifacts/`` there;
- ``my-kb.jsonl`` and ``my-mentions.jsonl``: the demo's KB and labelled mentions, the files
  the README's "Train on your own data" recipe names;
- ``xel-cli`` on ``PATH``, running this checkout's ``cli.py`` with the test's Python, and
  ``XEL_CACHE`` in the folder (with a link to the offline encoder for slow blocks).

The other tests need no subprocess: README.md has at most 300 lines; every relative link
in README.md and docs/*.md names an existing file (and heading, for ``#anchor``s); every
``xel-cli`` command line the documents spell names a command and options that exist (and
are not hidden old spellings, except in docs/cli.md, which lists the renamings).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

import cli

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RENAMINGS_PAGE = ROOT / "docs" / "cli.md"
README_MAX_LINES = 300
FAST_TIMEOUT_S = 300
SLOW_TIMEOUT_S = 3600

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?<![\w/.-])xel-cli(?=\s|$)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
GLOBAL_OPTIONS_WITH_VALUE = {"--threads"}
GLOBAL_OPTIONS = {"--debug", "-q", "--quiet", "--version", "-h", "--help", *GLOBAL_OPTIONS_WITH_VALUE}
SHELL_BREAKS = {"|", "||", "&&", ";", "#", ">", "2>", "2>&1"}


def _code_blocks(path: Path) -> list[tuple[str, str, int]]:
    """(info string, body, first body line) of each fenced block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 2) for m in FENCE.finditer(text)]


def _runnable_blocks() -> list:
    params = []
    for path in DOCUMENTS:
        for info, body, line in _code_blocks(path):
            words = info.split()
            if "runnable" not in words:
                continue
            marks = [pytest.mark.slow] if "slow" in words else []
            params.append(pytest.param(words[0], body, marks=marks, id=f"{path.relative_to(ROOT)}:{line}"))
    return params


@pytest.fixture
def doc_folder(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, dict[str, str]]:
    """The temporary folder a block runs in, and its environment (see the module docstring)."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "pipeline" / "demo_data", tmp_path / "pipeline" / "demo_data")
    shutil.copy(ROOT / "pipeline" / "demo_data" / "kb.jsonl", tmp_path / "my-kb.jsonl")
    shutil.copy(ROOT / "pipeline" / "demo_data" / "mentions.jsonl", tmp_path / "my-mentions.jsonl")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "xel-cli"
    wrapper.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -c "import cli; cli.main(prog_name=\'xel-cli\')" "$@"\n', encoding="utf-8"
    )
    wrapper.chmod(0o755)
    cache = tmp_path / "xel-cache"
    cache.mkdir()
    if request.node.get_closest_marker("slow"):
        encoder = request.getfixturevalue("default_encoder_dir")
        (cache / encoder.name).symlink_to(encoder, target_is_directory=True)
    python_path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    path = os.pathsep.join((str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")))
    env = {**os.environ, "XEL_CACHE": str(cache), "PYTHONPATH": python_path, "PATH": path}
    return tmp_path, env


@pytest.mark.parametrize(("language", "body"), _runnable_blocks())
def test_runnable_block_runs_as_written(
    language: str, body: str, doc_folder: tuple[Path, dict[str, str]], request: pytest.FixtureRequest
) -> None:
    assert language == "bash", f"a runnable block must be bash, not {language!r}"
    folder, env = doc_folder
    timeout = SLOW_TIMEOUT_S if request.node.get_closest_marker("slow") else FAST_TIMEOUT_S
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", body], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def test_at_least_one_fast_runnable_block_in_the_readme() -> None:
    infos = [info.split() for info, _, _ in _code_blocks(ROOT / "README.md")]
    assert any("runnable" in words and "slow" not in words for words in infos)


def test_readme_is_at_most_300_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def _anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_anchor(heading) for heading in HEADING.findall(text)}


def test_anchor_matches_githubs_ids() -> None:
    assert _anchor("Name matching (§7.1)") == "name-matching-71"
    assert _anchor("The mention's NIL prior") == "the-mentions-nil-prior"
    assert _anchor("Encoding at scale: resume, shards, Slurm") == "encoding-at-scale-resume-shards-slurm"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(path: Path) -> None:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
    missing = [page.name for page in DOCUMENTS[1:] if page.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def _command_lines(path: Path) -> list[str]:
    """Every `xel-cli ...` command the file spells: lines of code blocks, inline code spans."""
    text = path.read_text(encoding="utf-8")
    lines = [line for _, body, _ in _code_blocks(path) for line in body.splitlines()]
    lines += INLINE_CODE.findall(FENCE.sub("", text))
    return [line[match.start() :] for line in lines for match in COMMAND.finditer(line)]


def _unknown_names(command_line: str) -> list[str]:
    """Commands and options of one `xel-cli ...` line that xel-cli does not have."""
    tokens = [token.strip("[]()'\"`:,.") for token in command_line.split()[1:]]
    while tokens and tokens[0] in GLOBAL_OPTIONS:
        if tokens.pop(0) in GLOBAL_OPTIONS_WITH_VALUE and tokens:
            tokens.pop(0)  # its value (--threads N)
    if not tokens or tokens[0] in SHELL_BREAKS or tokens[0].startswith("<"):  # or a placeholder: <command>
        return []
    command = cli.main.commands.get(tokens[0])
    if command is None:
        return [f"command {tokens[0]!r}"]
    options = [param for param in command.params if isinstance(param, click.Option) and not param.hidden]
    known = {"-h", "--help"} | {name for option in options for name in (*option.opts, *option.secondary_opts)}
    unknown = []
    for token in tokens[1:]:
        if token in SHELL_BREAKS or token.startswith(("#", "2>", ">")):
            break
        if token.startswith("-") and token not in ("-", "->") and token.split("=")[0] not in known:  # "->": prose
            unknown.append(f"{tokens[0]} {token.split('=')[0]}")
    return unknown


def test_every_spelled_command_and_option_exists() -> None:
    """Hidden options (old spellings kept for one release) count as unknown, except in the page
    that lists the renamings."""
    unknown = [
        f"{path.relative_to(ROOT)}: {line!r}: {name}"
        for path in DOCUMENTS
        if path != RENAMINGS_PAGE
        for line in _command_lines(path)
        for name in _unknown_names(line)
    ]
    assert not unknown, "\n".join(unknown)
