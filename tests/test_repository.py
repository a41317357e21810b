"""Repository-wide invariants: notebooks, table of contents, environment files."""

import json
import re
from pathlib import Path

import pytest
import yaml

from encnet_lite import runtime

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        if "root" in node:
            files.append(node["root"])
        for value in node.values():
            files += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += _toc_files(item)
    return files


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks under book/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: clear them"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has a count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_is_the_colab_install_cell(path):
    nb = json.loads(path.read_text())
    first = "".join(nb["cells"][0]["source"])
    assert first == runtime.colab_install_source(), (
        f"{path.name}: the first cell must be encnet_lite.runtime.colab_install_source()"
    )
    # Hidden on the built site (it does nothing there), visible on Colab.
    assert "remove-cell" in nb["cells"][0].get("metadata", {}).get("tags", []), (
        f"{path.name}: tag the install cell 'remove-cell'"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_one_parameters_cell_that_sets_the_mode(path):
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    assert "book_mode(" in "".join(tagged[0]["source"])


def test_every_notebook_is_in_the_toc_and_every_toc_file_exists():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = _toc_files(toc)
    for entry in listed:
        matches = [p for p in (ROOT / f"{entry}.ipynb", ROOT / f"{entry}.md") if p.exists()]
        assert matches, f"_toc.yml lists {entry}, which does not exist"
    for path in NOTEBOOKS:
        assert f"book/{path.stem}" in listed, f"{path.name} is missing from _toc.yml"


def _requirement_names(reqs: list[str]) -> dict[str, str]:
    out = {}
    for req in reqs:
        name = re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower()
        out[name] = req.replace(" ", "")
    return out


def test_environment_yml_mirrors_pyproject():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += extra
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = [r for r in pip_section if not r.startswith("-e")]
    assert _requirement_names(listed) == _requirement_names(wanted)


def _constraints() -> dict:
    from packaging.requirements import Requirement

    lines = (ROOT / "constraints.txt").read_text().splitlines()
    reqs = [Requirement(s.split("#")[0]) for s in lines if s.split("#")[0].strip()]
    return {r.name: r for r in reqs}


def test_constraints_pin_torch_and_pyproject_stays_loose():
    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = _constraints()
    deps = {n: Requirement(r) for n, r in
            _requirement_names(_pyproject()["project"]["dependencies"]).items()}
    versions = {}
    for name in ("torch", "torchvision"):
        (spec,) = pins[name].specifier  # exactly one specifier: an exact pin
        assert spec.operator == "==" and "*" not in spec.version, f"{name}: {spec} is no pin"
        versions[name] = Version(spec.version)
        # pyproject accepts the pinned version, with lower bounds only (Colab's torch is
        # accepted as is): no upper bound, no pin of its own.
        assert deps[name].specifier.contains(versions[name]), name
        assert {s.operator for s in deps[name].specifier} == {">="}, name
    # A torchvision release is built for one torch release: 0.(m + 15) goes with 2.m.
    torch_v, vision_v = versions["torch"], versions["torchvision"]
    assert (torch_v.major, vision_v.major) == (2, 0)
    assert vision_v.minor == torch_v.minor + 15, f"torch {torch_v} with torchvision {vision_v}"
    # 2.3 is the first torch with torch.amp.GradScaler, which the training loop uses.
    assert min(Version(s.version) for s in deps["torch"].specifier) >= Version("2.3")


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_packaging_metadata():
    data = _pyproject()
    # An SPDX expression (PEP 639), which setuptools understands from 77 on.
    assert data["project"]["license"] == "MIT"
    floor = re.fullmatch(r"setuptools>=(\d+)", data["build-system"]["requires"][0])
    assert floor and int(floor.group(1)) >= 77
    import importlib

    for name, target in data["project"]["scripts"].items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
    assert {"encnet-train", "encnet-eval", "encnet-predict"} <= set(data["project"]["scripts"])


def test_pytest_keeps_its_default_norecursedirs_and_build_output_is_ignored():
    defaults = {"*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}"}
    assert defaults <= set(_pyproject()["tool"]["pytest"]["ini_options"]["norecursedirs"])
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "build/" in ignored and "dist/" in ignored


def test_colab_links_point_at_this_repository():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == runtime.REPO_URL
    assert config["repository"]["branch"] == runtime.REPO_REF
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


# --- the code keeps its own rules ----------------------------------------------------------

MAX_FUNCTION_LINES = 80


def _functions(path: Path):
    """``(name, first line, lines)`` of every function and method in ``path`` (decorators
    included)."""
    import ast

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            yield node.name, start, node.end_lineno - start + 1


def test_no_library_function_is_longer_than_80_lines():
    offenders = [f"{path.relative_to(ROOT)}:{line} {name} ({n} lines)"
                 for path in sorted((ROOT / "encnet_lite").rglob("*.py"))
                 for name, line, n in _functions(path) if n > MAX_FUNCTION_LINES]
    assert not offenders, (f"functions over {MAX_FUNCTION_LINES} lines (split them into named "
                           "steps): " + "; ".join(offenders))


def test_the_function_length_check_counts_lines():
    import tempfile

    body = "".join(f"    x{i} = {i}\n" for i in range(5))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.py"
        path.write_text(f"@staticmethod\ndef f():\n{body}\n\nclass A:\n    def g(self):\n"
                        "        pass\n")
        assert list(_functions(path)) == [("f", 1, 7), ("g", 11, 2)]


def test_viz_imports_neither_training_nor_ablation_code():
    import ast

    for path in sorted((ROOT / "encnet_lite" / "viz").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module or ''}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = set(name.strip(".").split("."))
                assert not parts & {"train", "ablation", "engine"}, (
                    f"viz/{path.name} imports {name}: viz draws what it is given; the caller "
                    "trains, loads and computes")


# Absolute paths of one particular machine (home folders, mounts, a workspace); the Colab
# paths (/content/...) are where Colab puts things, for every user, and stay allowed.
WORKSPACE = "/wor" + "k/"  # spelled in two parts so this file does not name it
MACHINE_PATH = re.compile(r"(?<![\w.])(" + WORKSPACE
                          + r"|/home/\w|/Users/\w|/root/|/mnt/\w|[A-Z]:\\Users)")
OUTSIDE_FILE = "PAPER" + ".md"  # spelled in two parts so this file does not name it


def _own_text_files():
    patterns = ["*.md", "*.yml", "*.toml", "*.txt", "Makefile", "book/*.ipynb", "book/*.md",
                "notes/*.md", "encnet_lite/**/*.py", "benchmarks/*.py", "data_scripts/*.py",
                "tests/*.py", ".ci/*"]
    for pattern in patterns:
        yield from (p for p in sorted(ROOT.glob(pattern)) if p.is_file())


def test_the_repository_names_no_machine_path_and_no_file_outside_it():
    found = []
    for path in _own_text_files():
        if path == Path(__file__).resolve():
            continue  # this file spells the patterns out
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line) or OUTSIDE_FILE in line:
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:80]}")
    assert not found, ("name no machine path and no file outside the repository (cite the "
                       "paper or the official code instead): " + "; ".join(found))
    assert MACHINE_PATH.search('out = "/home/alice/runs"')
    assert not MACHINE_PATH.search('Path("/content/drive/MyDrive")')


def test_readme_maps_every_library_module():
    """README's module map has a row for each module of encnet_lite (the packages data/,
    models/ and viz/ as one row each) and none for a module that is gone."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### The library, module by module", 1)[1].split("\n## ", 1)[0]
    mapped = set()
    for row in re.findall(r"^\| ([^|]+) \|", section, flags=re.M):
        mapped.update(re.findall(r"`([\w/]+)`", row))
    package = ROOT / "encnet_lite"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert modules - mapped == set(), "add a line for each to README's module map"
    assert mapped - modules == set(), "these rows name no module of encnet_lite"
