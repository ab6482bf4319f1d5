"""The repository explains itself and stays layered: every citation points inside it, and imports go one way
(stages over common/, slurm/ over the stages, no cycles inside common/)."""
import ast
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {"refine", "proclip_stage1", "proclip_stage2", "evaluate"}


def tracked_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [path for path in out.splitlines() if os.path.isfile(os.path.join(ROOT, path))]


def text_files():
    for path in tracked_files():
        if path.endswith((".py", ".md", ".yaml", ".txt", ".json", ".sh")) or path in ("Makefile", ".ci/run"):
            yield path, open(os.path.join(ROOT, path), encoding="utf-8").read()


def test_no_file_refers_outside_the_repository():
    outside = re.compile(r"METHODS\.md|TOYWORLD\.md|DEVELOPERS\.md|shared/spec|/work/")
    offenders = [f"{path}: {m.group(0)}" for path, text in text_files() if path != "tests/test_layout.py"
                 for m in outside.finditer(text)]
    assert offenders == []


def test_every_citation_of_the_methods_names_an_existing_section():
    methods = open(os.path.join(ROOT, "docs/methods.md"), encoding="utf-8").read()
    sections = set(re.findall(r"^## (\d+)\.", methods, flags=re.M))
    assert {"1", "2", "3"} <= sections
    cited = {(path, n) for path, text in text_files() for n in re.findall(r"docs/methods\.md §(\d+)", text)}
    assert cited, "the code cites docs/methods.md"
    assert sorted((path, n) for path, n in cited if n not in sections) == []


def imports_of(path):
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name.split(".")[0] if name.split(".")[0] in STAGES else name for name in names}


def test_imports_are_layered():
    python = [p for p in tracked_files() if p.endswith(".py") and not p.startswith("tests/")]
    graph = {p[:-3].replace("/", "."): imports_of(p) for p in python}
    for module, names in graph.items():
        if module.startswith("common."):
            assert not names & STAGES, f"{module} imports a stage"
            assert not any(n.startswith("slurm") for n in names), f"{module} imports slurm/"
        if module in STAGES:
            assert not any(n.startswith("slurm") for n in names), f"{module} imports slurm/"
    common = {m: {n for n in names if n in graph and n.startswith("common.")} for m, names in graph.items()
              if m.startswith("common.")}
    visiting, done = set(), set()

    def visit(module, path):
        assert module not in visiting, f"import cycle: {' -> '.join(path + [module])}"
        if module in done:
            return
        visiting.add(module)
        for dependency in common.get(module, ()):
            visit(dependency, path + [module])
        visiting.discard(module)
        done.add(module)

    for module in common:
        visit(module, [])
