"""The package layering of DESIGN.md "Layers", checked on every module's imports (top level and
inside functions alike): stages orchestrate and lend nothing; what several of them run lives
below them; core is the floor."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
STAGE_PACKAGES = ("triage", "encode", "train", "evaluate", "rerank")
# Packages that must not reach into any stage package (their own excepted).
LAYERS = {path.stem for path in PIPELINE.iterdir() if path.is_dir() or path.suffix == ".py"} - {"__init__"}
NO_STAGE_IMPORTS = STAGE_PACKAGES + ("link", "studies", "candidates", "encoders", "model", "scoring", "formats", "core")


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(second-level package under `pipeline`, line) of every `pipeline.<package>` import in a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            # `from pipeline import __version__` names the package root's attribute, no layer.
            if parts[0] == "pipeline" and len(parts) > 1 and parts[1] in LAYERS:
                found.add((parts[1], node.lineno))
    return found


def modules_of(package: str) -> list[Path]:
    return sorted((PIPELINE / package).rglob("*.py"))


@pytest.mark.parametrize("package", NO_STAGE_IMPORTS)
def test_no_package_imports_a_stage_package(package):
    offences = [
        f"{path.relative_to(PIPELINE.parent)}:{line} imports pipeline.{imported}"
        for path in modules_of(package)
        for imported, line in imported_packages(path)
        if imported in STAGE_PACKAGES and imported != package
    ]
    assert offences == []


def test_core_imports_nothing_above_it():
    offences = [
        f"{path.relative_to(PIPELINE.parent)}:{line} imports pipeline.{imported}"
        for path in modules_of("core")
        for imported, line in imported_packages(path)
        if imported != "core"
    ]
    assert offences == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from pipeline import __version__\ndef f():\n    from pipeline.triage.stage import run\n"
        "    import pipeline.encode.stage\n"
    )
    assert imported_packages(module) == {("triage", 3), ("encode", 4)}


MAX_FUNCTION_LINES = 60


def test_no_function_in_pipeline_is_over_60_lines():
    long = []
    for path in sorted(PIPELINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PIPELINE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
