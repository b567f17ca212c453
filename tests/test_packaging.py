"""The conda route and the pip route install the same packages, and the layout is in place."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# conda names that differ from their PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def _pyproject_packages(extras: tuple[str, ...] = ("test",)) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return {_name(r) for r in reqs}


def _environment_packages() -> set[str]:
    names = set()
    in_deps = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if stripped.startswith("dependencies:"):
            in_deps = True
            continue
        # top-level "- name" entries and the nested pip list ("-e ." is the package itself)
        m = re.match(r"^(?:  |      )- ([A-Za-z0-9_.\-]+.*)$", stripped)
        if in_deps and m and not m.group(1).startswith(("pip:", "-e")):
            name = _name(m.group(1))
            if name not in {"python", "pip"}:
                names.add(CONDA_TO_PYPI.get(name, name))
    return names


def test_environment_yml_matches_pyproject():
    conda, pip = _environment_packages(), _pyproject_packages()
    assert conda, "no packages parsed from environment.yml"
    assert conda == pip, (
        f"environment.yml and pyproject.toml disagree: only in environment.yml: "
        f"{sorted(conda - pip)}, only in pyproject.toml (dependencies + [test]): {sorted(pip - conda)}"
    )


def test_environment_yml_installs_the_package():
    assert "- -e ." in (ROOT / "environment.yml").read_text()


def test_layout():
    for folder in ("notebooks", "vit_course", "data", "assets", "tests", "benchmarks", "docs"):
        assert (ROOT / folder).is_dir(), f"missing top-level folder {folder}/"
    for file in ("environment.yml", "pyproject.toml", "Makefile", "README.md", ".ci/run"):
        assert (ROOT / file).is_file(), f"missing {file}"


def test_notebooks_committed_without_outputs():
    import json

    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text())
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, (
                    f"{nb_path.name} cell {i} has outputs; clear them before committing"
                )
