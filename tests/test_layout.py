"""The repository explains itself and stays layered: every citation points inside it, imports go one way (common/
under the stages, the stages under tools/, slurm/ over everything), no cycles, and the list of programs is one."""
import ast
import os
import re
import subprocess

from slurm.job import STAGES, TOOLS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_every_file_and_module_named_exists():
    """A path such as tools/tables.py or a command such as `python -m tools.tables` names what is there."""
    path = re.compile(r"(?<![\w/.-])((?:common|tools|slurm|tests|configs|docs)/[\w./-]*\.(?:py|md|yaml|sh|txt|json))\b")
    module = re.compile(r"python3? -m ((?:common|tools|slurm|tests)\.[a-z_][\w.]*)")
    offenders = []
    for name, text in text_files():
        offenders += [f"{name}: {m.group(1)}" for m in path.finditer(text) if not os.path.exists(
            os.path.join(ROOT, m.group(1)))]
        offenders += [f"{name}: python -m {m.group(1)}" for m in module.finditer(text)
                      if not os.path.exists(os.path.join(ROOT, m.group(1).rstrip(".").replace(".", "/") + ".py"))]
    assert offenders == []


def test_no_file_tells_the_history_of_the_repository():
    """Files say what is; git holds the history. No issue numbers, no earlier versions."""
    history = re.compile(r"\bissue #?\d+|earlier forms?\b|before this version|before seeds", re.I)
    offenders = [f"{path}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for path, text in text_files()
                 if path != "tests/test_layout.py" for m in history.finditer(text)]
    assert offenders == []


def test_the_readme_is_short():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def python_modules():
    """{module name: path} of every tracked Python file outside tests/."""
    return {p[:-3].replace("/", ".").removesuffix(".__init__"): p for p in tracked_files()
            if p.endswith(".py") and not p.startswith("tests/")}


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


def is_program(path):
    return "__main__" in open(os.path.join(ROOT, path), encoding="utf-8").read()


def test_the_registry_lists_every_stage_and_tool():
    """slurm/job.py's STAGES are the top-level programs (hubconf.py is torch.hub's entry point, not a program) and its
    TOOLS the programs in tools/ that a job may run (tools.export and tools.index_data are run by hand, by make
    export, push and data-index, never a job of the chain): one list of each."""
    modules = python_modules()
    assert sorted(m for m, p in modules.items() if "/" not in p and m != "hubconf") == sorted(STAGES)
    assert sorted(m for m, p in modules.items() if m.startswith("tools.") and is_program(p)
                  and m not in ("tools.export", "tools.index_data")) == sorted(TOOLS)


def test_imports_are_layered():
    modules = python_modules()
    graph = {module: imports_of(path) for module, path in modules.items()}
    layer = lambda names, prefix: sorted(n for n in names if n == prefix or n.startswith(prefix + "."))
    for module, names in graph.items():
        if module.startswith("common"):
            assert not names & set(STAGES), f"{module} imports a stage"
            assert not layer(names, "tools"), f"{module} imports tools/"
        if module in STAGES:
            assert not layer(names, "tools"), f"{module} imports tools/"
        if not module.startswith("slurm"):
            assert not layer(names, "slurm"), f"{module} imports slurm/"
    internal = {m: {n for n in names if n in graph and n != m} for m, names in graph.items()}
    visiting, done = set(), set()

    def visit(module, path):
        assert module not in visiting, f"import cycle: {' -> '.join(path + [module])}"
        if module in done:
            return
        visiting.add(module)
        for dependency in internal.get(module, ()):
            visit(dependency, path + [module])
        visiting.discard(module)
        done.add(module)

    for module in internal:
        visit(module, [])


def test_common_is_a_library_that_several_programs_share():
    """common/ holds no program, and each of its modules serves at least two programs (stages, tools, and hubconf.py,
    torch.hub's way in)."""
    modules = python_modules()
    graph = {module: {n for n in imports_of(path) if n in modules} for module, path in modules.items()}
    programs = [*STAGES, *TOOLS, "tools.export", "hubconf"]

    def reached(module, seen):
        for dependency in graph[module] - seen:
            seen.add(dependency)
            reached(dependency, seen)
        return seen

    users = {m: [p for p in programs if m in reached(p, set())] for m in modules if m.startswith("common.")}
    assert [m for m in users if is_program(modules[m])] == [], "a program in common/: move it to tools/"
    assert {m: u for m, u in users.items() if len(u) < 2} == {}


def test_the_readme_map_names_every_module_of_common_and_tools():
    """README's "What is where" block names each Python file of common/ and tools/ under its folder."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = readme.split("## What is where", 1)[1].split("```")[1]
    sections = dict(re.findall(r"^(common|tools)/(.*?)(?=^\S)", block, flags=re.M | re.S))
    for folder in ("common", "tools"):
        named = set(re.findall(r"\b(\w+)\.py\b", sections[folder]))
        modules = {p.split("/")[1][:-3] for p in tracked_files() if re.fullmatch(rf"{folder}/\w+\.py", p)}
        assert sorted(modules - named - {"__init__"}) == [], f"README's What is where leaves these out of {folder}/"
