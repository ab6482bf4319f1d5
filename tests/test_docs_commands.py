"""The docs run: every shell command shown in a code block of README.md and docs/*.md is run here as a newcomer
runs it (toy preset, a fresh shell in a fresh copy of the repository, `source .venv/bin/activate` done as the
README says), or is named in NOT_RUN with the reason; the outputs the docs quote are checked against what the code
prints.

Which lines are commands: in a fenced block (no language tag, or sh, bash, shell, console) or an indented block, a
line whose first word (after a `$ ` prompt and NAME=value settings) is a program of COMMAND_WORDS or an executable
file of the repository; a line ending in a backslash goes on on the next; a `  # comment` is not part of it. In a
block with `$ ` prompts only those lines are commands, and the lines after each are its quoted output. A command with
a placeholder (an all-caps word that is no file here such as FILE or DIR, `[...]`, `a|b`, `...`) is a synopsis: it
is not run, but its program's --help must name each --option and config key it shows. So are the commands of
NOT_RUN; those that are `make` commands also run as `make -n` (the targets and variables exist, and the environment
is not installed again).
"""
import ast
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import proclip_stage1
import proclip_stage2
import refine
from common.config import load_config, read_yaml
from common.train import EpochBatches
from common.watch import RunLog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(f"docs/{name}" for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md"))
SHELL_TAGS = {"", "sh", "bash", "shell", "console"}
COMMAND_WORDS = {"make", "python", "python3", ".venv/bin/python", "source", ".", "export", "cd", "pip", "sudo",
                 "sbatch", "srun", "scancel", "squeue", "for", "tensorboard", "git", "bash", "env"}
ACTIVATE = "source .venv/bin/activate"

# Every shown command that is not run here, and why. "make -n": the test runs its dry run instead.
SLURM = "needs a SLURM cluster (make test-slurm: tests/test_slurm.py, tests/test_chain.py)"
PAPER_DATA = "needs the paper preset's real datasets (make test-paper runs the chain on fakes; make -n here)"
NOT_RUN = {
    # README.md
    "make reproduce-table1": "the whole toy run, ~1,000 CPU seconds (make -n here; its plan: tests/test_makefile.py; "
                             "the run: make bench-reproduce, and tests/test_chain.py under make test-slurm)",
    "make test": "the suite this test is part of (make -n here)",
    "make data PRESET=paper DATA_ROOT=$DATA_ROOT": PAPER_DATA,
    "make check-data PRESET=paper DATA_ROOT=$DATA_ROOT": PAPER_DATA + "; the check itself: tests/test_paper_data.py",
    "make reproduce-table1 PRESET=paper DATA_ROOT=$DATA_ROOT": PAPER_DATA + ", and a GPU",
    "make reproduce-table1 CLUSTER=slurm": SLURM,
    'make reproduce-table1 CLUSTER=slurm PRESET=paper SLURM_ARGS="--partition gpu --account myproj"': SLURM,
    "python -m slurm.chain --preset paper --dry-run": "prints the plan, then stops at the data check without the "
                                                      "paper preset's datasets (tests/test_chain.py: the dry run)",
    # docs/paper_preset.md
    "make weights PRESET=paper WEIGHTS_DIR=/models/postclip": "needs the Hugging Face Hub (tests/test_weights.py "
                                                              "fetches from tests/fake_hub.py; make -n here)",
    "make check-weights PRESET=paper WEIGHTS_DIR=/models/postclip": "needs the weights fetched from the Hub "
                                                                    "(tests/test_weights.py; make -n here)",
    'make reproduce-table1 PRESET=paper DATA_ROOT=$DATA_ROOT CLUSTER=slurm SLURM_ARGS="--partition gpu"': SLURM,
    "for k in 0 1 2 3 4 5 6 7; do CUDA_VISIBLE_DEVICES=$k python -m tools.fill_cache --stage1-config "
    "configs/paper/proclip_stage1.yaml --stage2-config configs/paper/proclip_stage2.yaml --eval-config "
    "configs/paper/eval_proclip.yaml --part $k --num-parts 8 & done; wait":
        "8 GPUs and the paper preset's data (--part/--num-parts: tests/test_fill_cache.py)",
    "sbatch --array=0-7 --gpus=1 --wrap 'python -m tools.fill_cache --stage1-config configs/paper/proclip_stage1.yaml "
    "--stage2-config configs/paper/proclip_stage2.yaml --eval-config configs/paper/eval_proclip.yaml --part "
    "$SLURM_ARRAY_TASK_ID --num-parts 8'": SLURM + ", GPUs and the paper preset's data",
    # docs/results.md, docs/commands.md, docs/toyworld.md, docs/watching.md: the toy steps
    "make world": "the toy world, ~40 CPU seconds (tests/test_toyworld.py generates a small one; make -n here)",
    "make toy-clip": "pre-trains the toy CLIP, ~110 CPU seconds (tests/test_refine.py trains tiny runs; make -n here)",
    "python -m tools.toyworld --out data/toy --config configs/toy/world.yaml": "the toy world (tests/test_toyworld.py)",
    "python evaluate.py --config configs/toy/eval.yaml pretrained=runs/toy/pretrain/model.pt "
    "out_dir=results/toy/pretrained prior_stats_file=results/toy/pretrained/prior_stats.pt":
        "needs the toy CLIP (tests/test_evaluate.py evaluates a tiny one)",
    "python evaluate.py --config configs/toy/eval.yaml pretrained=runs/toy/pretrain/model.pt "
    "out_dir=results/toy/pretrained": "needs the toy CLIP (tests/test_evaluate.py evaluates a tiny one)",
    "python refine.py --config configs/toy/refine.yaml objective=clip_refine seed=1 "
    "run_dir=runs/toy/refine/clip_refine/seed1": "needs the toy world and CLIP (tests/test_refine.py; this test "
                                                 "trains a tiny run with configs/toy/refine.yaml)",
    "python evaluate.py --config configs/toy/eval.yaml pretrained=runs/toy/refine/clip_refine/seed1/model.pt "
    "out_dir=results/toy/clip_refine/seed1 name=clip_refine": "needs a toy run (tests/test_evaluate.py)",
    "python refine.py --config configs/toy/refine.yaml objective=clip_refine 'seeds=[0,1,2]' "
    "'run_dir=runs/toy/refine/clip_refine/seed{seed}'": "needs the toy world and CLIP (tests/test_refine.py: "
                                                       "seeds=[...], a tiny world)",
    "python evaluate.py --config configs/toy/eval.yaml name=clip_refine 'seeds=[0,1,2]' "
    "'out_dir=results/toy/clip_refine/seed{seed}' 'pretrained=runs/toy/refine/clip_refine/seed{seed}/model.pt'":
        "needs the toy runs (tests/test_evaluate.py: seeds=[...])",
    "pip install tensorboard": "needs the package index, and installs an optional package",
    "python refine.py --config configs/toy/refine.yaml run_dir=runs/toy/refine/tb report_to=tensorboard":
        "needs tensorboard and the toy world (tests/test_watch.py: report_to=tensorboard)",
    "tensorboard --logdir runs/toy": "a server, of an optional package",
    # docs/slurm.md
    "python -m slurm.launcher refine --config configs/paper/refine.yaml objective=clip_refine "
    "run_dir=runs/paper/refine/clip_refine --partition gpu --gpus-per-node 4 --timeout-min 600": SLURM,
    "python -m slurm.launcher refine --config configs/toy/pretrain.yaml run_dir=runs/toy/pretrain "
    "--slurm-config slurm/local.yaml": SLURM,
    "make reproduce-table1 CLUSTER=slurm SEEDS=0 PYTHON=/root/postclip-venv/bin/python "
    "SLURM_CONFIG=slurm/local.yaml": SLURM,
    "scancel 147": SLURM,
    "sudo slurm/local_cluster.sh up": "installs and starts SLURM as root (CI runs make slurm-up, then make test-slurm)",
    "make test-slurm": SLURM + "; make -n here",
    "sudo slurm/local_cluster.sh down": "stops the SLURM that slurm-up started (CI)",
    "slurm/local_cluster.sh up": "installs and starts SLURM as root (CI)",
    # docs/commands.md: sharing a model
    "make export RUN_DIR=runs/toy/refine/clip_refine/seed0 OUT=exported/clip_refine":
        "needs a toy run (tests/test_export.py exports tiny runs; make -n here)",
    "make export RUN_DIR=runs/toy/proclip/stage2/seed0 OUT=exported/proclip":
        "needs a toy run (tests/test_export.py exports tiny runs; make -n here)",
    "make push OUT=exported/clip_refine REPO=ORG/NAME":
        "needs the Hugging Face Hub and an exported folder (tests/test_export.py pushes to tests/fake_hub.py)",
}


# --- what the docs show ------------------------------------------------------------------------------------------
def code_blocks(text):
    """[(line number, lines)] of the fenced shell blocks and the indented blocks of a Markdown text."""
    lines, blocks, i = text.split("\n"), [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if lines[i][3:].strip() in SHELL_TAGS:
                blocks.append((i + 2, lines[i + 1:end]))
            i = end + 1
        elif lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            block = [line[4:] for line in lines[i:end]]
            while not block[-1].strip():
                block.pop()
            blocks.append((i + 1, block))
            i = end
        else:
            i += 1
    return blocks


def first_word(line):
    words = [w for w in line.split() if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w)]
    return words[0] if words else ""


def is_command(line):
    word = first_word(line)
    return word in COMMAND_WORDS or ("/" in word and os.access(os.path.join(ROOT, word), os.X_OK)
                                     and os.path.isfile(os.path.join(ROOT, word)))


def shown_commands():
    """[(file:line, command, quoted output lines, NAME=value exports before it in its block)], every command of
    every code block of the docs, with its continuation lines joined, its comment and spacing taken out."""
    found = []
    for doc in DOCS:
        for start, block in code_blocks(open(os.path.join(ROOT, doc), encoding="utf-8").read()):
            transcript = any(line.startswith("$ ") for line in block)
            exports, i = [], 0
            while i < len(block):
                line, where = block[i], f"{doc}:{start + i}"
                if transcript and not line.startswith("$ ") or not transcript and not is_command(line):
                    i += 1
                    continue
                parts = [line[2:] if transcript else line]
                while parts[-1].rstrip().endswith("\\") and i + 1 < len(block):
                    i += 1
                    parts[-1] = parts[-1].rstrip()[:-1]
                    parts.append(block[i])
                command = " ".join(re.sub(r"\s+#\s.*$", "", " ".join(parts)).split())
                i += 1
                output = []
                while transcript and i < len(block) and not block[i].startswith("$ "):
                    output.append(block[i])
                    i += 1
                found.append((where, command, output, list(exports)))
                if command.startswith("export "):
                    exports.append(command)
    return found


def words_of(command):
    try:
        return shlex.split(command)
    except ValueError:  # a synopsis with a quote in its description
        return command.split()


def placeholders(command):
    """The words of a synopsis that a user fills in: FILE, DIR, [--option VALUE], a|b, ..."""
    return [w for w in words_of(command) if w.startswith("[") or w.endswith("]") and "=" not in w or w == "..." or
            ("|" in w and w != "|") or (re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[A-Za-z]+)*", w)
                                        and not os.path.exists(os.path.join(ROOT, w)))]


def python_program(command):
    """The argv that gives the --help of the python program a command runs (its script or module and its action
    words), or None when it runs no python program of this repository directly."""
    words = command.split()
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words.pop(0)
    if len(words) < 2 or words[0] not in ("python", "python3", ".venv/bin/python") or words[1] == "-c":
        return None
    program = words[1:3] if words[1] == "-m" else words[1:2]
    if placeholders(" ".join(program)):
        return None  # the form of every command, not one program
    actions = []
    for word in words[len(program) + 1:]:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", word):
            break
        actions.append(word)
    return [*program, *actions, "--help"]


SHOWN = shown_commands()


@pytest.fixture(scope="module")
def helps():
    """{argv: its --help text} of every python program the docs show without running it, from one process."""
    argvs = sorted({tuple(python_program(c)) for _, c, _, _ in SHOWN
                    if python_program(c) and (c in NOT_RUN or placeholders(c))})
    script = (
        "import contextlib, io, json, runpy, sys\n"
        "out = {}\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    sys.argv, text = argv[1:] if argv[0] == '-m' else list(argv), io.StringIO()\n"
        "    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):\n"
        "        try:\n"
        "            runpy.run_module(argv[1], run_name='__main__', alter_sys=True) if argv[0] == '-m' else \\\n"
        "                runpy.run_path(argv[0], run_name='__main__')\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    out[' '.join(argv)] = text.getvalue()\n"
        "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(argvs)], cwd=ROOT, capture_output=True,
                          text=True, check=True, timeout=600)
    return json.loads(done.stdout.splitlines()[-1])


# --- a newcomer's copy of the repository ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """A fresh copy of the repository (its tracked and new files, nothing generated) whose .venv has this
    environment's packages and the marker of an environment made from its requirements.lock; and the environment
    variables of a fresh shell (no virtual environment active, no make variables)."""
    copy = tmp_path_factory.mktemp("newcomer") / "postclip"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(copy / name), exist_ok=True)
            subprocess.run(["cp", "-p", os.path.join(ROOT, name), copy / name], check=True)
    venv = copy / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    purelib = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    import site
    with open(os.path.join(purelib, "this_environment.pth"), "w") as f:  # this environment's packages
        f.write("".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))
    env = {"PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                   if not os.path.exists(os.path.join(p, "activate"))),
           "HOME": os.environ.get("HOME", str(copy)), "LANG": "C.UTF-8", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    marker = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "print-%: ; @echo $($*)",
                             "print-INSTALLED"], cwd=copy, env=env, capture_output=True, text=True,
                            check=True).stdout.strip()
    (copy / marker).touch()
    later = os.stat(copy / marker).st_mtime + 60
    os.utime(copy / "requirements.lock", (later, later))  # as in a clone made after the environment
    return copy, env


def in_fresh_shell(newcomer, command, exports=(), timeout=300):
    copy, env = newcomer
    script = "\n".join([ACTIVATE, *exports, command])
    try:
        return subprocess.run(["bash", "-c", script], cwd=copy, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{command}` ran over {timeout} s: list it in NOT_RUN, with the test that covers it")


@pytest.fixture(scope="module")
def toy_run(newcomer, tiny_world, tiny_clip):
    """A tiny clip_refine run of configs/toy/refine.yaml, in the copy's runs/toy/refine/clip_refine/seed0: what it
    printed."""
    copy, _ = newcomer
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        refine.main(["--config", os.path.join(ROOT, "configs/toy/refine.yaml"),
                     f"run_dir={copy}/runs/toy/refine/clip_refine/seed0", f"pretrained={tiny_clip}",
                     f"train_data={tiny_world}/coco/captions_train.json", f"train_images={tiny_world}/coco/train",
                     "batch_size=8", "holdout_fraction=0.25", "log_every=2", "image_cache="])
    return out.getvalue()


# --- the tests ---------------------------------------------------------------------------------------------------
def test_every_command_shown_is_run_or_listed_with_a_reason_and_the_list_names_only_shown_commands():
    shown = {command for _, command, _, _ in SHOWN}
    assert len(shown) >= 30, "the docs' commands were not found: the rule of this test no longer reads them"
    stale = sorted(set(NOT_RUN) - shown)
    assert stale == [], f"NOT_RUN lists commands the docs no longer show: {stale}"
    assert all(len(reason.split()) >= 3 for reason in NOT_RUN.values())


def test_the_readme_says_once_how_to_get_the_environment_before_its_first_python_command():
    readme = [command for where, command, _, _ in SHOWN if where.startswith("README.md:")]
    assert readme.count(ACTIVATE) == 1
    python = [i for i, c in enumerate(readme) if first_word(c) == "python"]
    assert python and readme.index(ACTIVATE) < python[0]


RUN_HERE = []  # each command once, where it is first shown
for where, command, output, exports in SHOWN:
    if command not in NOT_RUN and not placeholders(command) and not command.startswith("export ") and \
            (command, exports) not in [(c, e) for _, c, _, e in RUN_HERE]:
        RUN_HERE.append((where, command, output, exports))


@pytest.mark.parametrize("where, command, output, exports", RUN_HERE, ids=[f"{w} {c}" for w, c, _, _ in RUN_HERE])
def test_a_shown_command_runs_as_shown(where, command, output, exports, newcomer, toy_run):
    done = in_fresh_shell(newcomer, command, exports)
    quoted = [line for line in output if line.strip() and line.strip() != "..."]
    error = any("error" in line for line in quoted)
    assert (done.returncode != 0) == error, f"{where}: `{command}` exited {done.returncode}:\n{done.stderr[-3000:]}"
    printed = (done.stdout + done.stderr).splitlines()
    for line in quoted:  # the output the docs quote, line by line
        assert line in printed, f"{where}: `{command}` does not print the line the docs quote:\n{line}\nbut:\n" + \
                                "\n".join(printed[-20:])


NOT_RUN_MAKE = sorted({c for _, c, _, _ in SHOWN if c in NOT_RUN and first_word(c) == "make"})


@pytest.mark.parametrize("command", NOT_RUN_MAKE)
def test_a_make_command_that_is_not_run_here_makes_its_plan_without_installing_again(command, newcomer):
    exports = next(e for _, c, _, e in SHOWN if c == command)
    done = in_fresh_shell(newcomer, command.replace("make ", "make -n ", 1), exports)
    assert done.returncode == 0, f"`{command}`, dry run:\n{done.stderr[-3000:]}"
    assert "pip install" not in done.stdout, f"`{command}` would install the environment again"


def test_each_option_and_config_key_of_a_command_not_run_is_one_its_program_has(helps):
    wrong = []
    for where, command, _, _ in SHOWN:
        argv = python_program(command)
        if not argv or not (command in NOT_RUN or placeholders(command)):
            continue
        text = helps[" ".join(argv)]
        assert "usage" in text.lower() or "python -m" in text, f"{where}: {' '.join(argv)}: {text[-500:]}"
        for word in command.split():
            option = re.fullmatch(r"\[?(--[a-z][a-z0-9-]*)\]?", word)
            key = re.fullmatch(r"'?([a-z][a-z0-9_]*)=.*", word)
            if option and option.group(1) not in text:
                wrong.append(f"{where}: {option.group(1)} is no option of {' '.join(argv[:-1])}")
            if key and "(the keys are listed below)" in text and f"\n  {key.group(1)}=" not in text:
                wrong.append(f"{where}: {key.group(1)}= is no config key of {' '.join(argv[:-1])}")
    assert wrong == []


def test_the_synopses_name_programs_that_exist():
    for where, command, _, _ in SHOWN:
        if not placeholders(command):
            continue
        word = first_word(command)
        if word.startswith("python"):
            continue  # checked against its --help
        assert os.access(os.path.join(ROOT, word), os.X_OK), f"{where}: {word}"


def test_the_commands_a_programs_help_shows_print_as_its_docstring_writes_them():
    """A docstring that --help prints keeps its backslash continuations (a raw string): its commands print as
    written, ready to copy."""
    checked = 0
    for folder in ("", "common", "tools", "slurm"):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            path = os.path.join(ROOT, folder, name)
            source = open(path, encoding="utf-8").read() if name.endswith(".py") else ""
            if "description=__doc__" not in source:
                continue
            docstring = ast.parse(source).body[0].value
            written = ast.get_source_segment(source, docstring)
            assert written.count("\n") == docstring.value.count("\n"), f"{path}: make its docstring r\"\"\"...\"\"\""
            checked += 1
    assert checked >= 8


# --- the outputs the docs quote -----------------------------------------------------------------------------------
def toy_steps(config):
    """The training steps of a toy preset config, as train() counts them, on the world of configs/toy/world.yaml
    (pretrain.csv and recaption.csv: a row per pre-training image)."""
    stage = {"proclip_stage1.yaml": proclip_stage1, "proclip_stage2.yaml": proclip_stage2}.get(
        os.path.basename(config), refine)
    cfg = load_config(stage.DEFAULTS, os.path.join(ROOT, config), {})
    world = read_yaml(os.path.join(ROOT, "configs/toy/world.yaml"))
    items = world["n_coco_train"] if cfg.train_format == "coco" else world["n_pretrain"]
    items = min(items, getattr(cfg, "max_images", 0) or items)
    items -= int(round(cfg.holdout_fraction * items))
    return cfg.epochs * EpochBatches(items, cfg.batch_size, cfg.seed).num_batches


QUOTED_STEPS = [  # (file, what its text says, the config whose step count it quotes)
    ("configs/toy/refine.yaml", r"give (\d+) steps at 128", "configs/toy/refine.yaml"),
    ("configs/toy/refine.yaml", r"barely moves (\d+) toy", "configs/toy/refine.yaml"),
    ("docs/results.md", r"one epoch \((\d+) steps of 128\)", "configs/toy/refine.yaml"),
    ("docs/performance.md", r"CLIP-Refine / baseline runs \((\d+) steps\)", "configs/toy/refine.yaml"),
    ("docs/performance.md", r"toy CLIP pre-training \((\d+) steps\)", "configs/toy/pretrain.yaml"),
    ("docs/watching.md", r"step \d+/(\d+) \(", "configs/toy/refine.yaml"),
    ("docs/slurm.md", r"step \d+/(\d+)", "configs/toy/pretrain.yaml"),
    ("configs/toy/proclip_stage1.yaml", r"more epochs \((\d+) steps\)", "configs/toy/proclip_stage1.yaml"),
    ("configs/toy/proclip_stage2.yaml", r"with (\d+) steps the teacher", "configs/toy/proclip_stage2.yaml"),
    ("configs/toy/proclip_stage2.yaml", r"Toy: (\d+) steps \(", "configs/toy/proclip_stage2.yaml"),
]


@pytest.mark.parametrize("path, pattern, config", QUOTED_STEPS)
def test_the_step_counts_the_docs_quote_are_the_runs(path, pattern, config):
    quoted = re.findall(pattern, open(os.path.join(ROOT, path), encoding="utf-8").read())
    assert quoted, f"{path} no longer says {pattern!r}: update QUOTED_STEPS"
    assert {int(q) for q in quoted} == {toy_steps(config)}, f"{path}: {pattern}"


def shape(line):
    """A printed line with every number replaced by #: what stays from one run to another."""
    return re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "#", line.strip())


def watching_lines():
    """The two progress lines docs/watching.md quotes: the terminal's, and the one a log step prints."""
    text = open(os.path.join(ROOT, "docs/watching.md"), encoding="utf-8").read()
    section = text.split("## The progress line")[1].split("\n## ")[0]
    lines = [line for _, block in code_blocks(section) for line in block]
    assert len(lines) == 2 and all(line.startswith("step ") for line in lines), lines
    return lines


def test_the_progress_lines_docs_watching_quotes_are_the_ones_a_toy_refine_run_prints(toy_run, tmp_path):
    terminal, logged = watching_lines()
    total = toy_steps("configs/toy/refine.yaml")
    for line in (terminal, logged):
        step, of, percent = map(int, re.match(r"step (\d+)/(\d+) \((\d+)%\)", line).groups())
        assert of == total and percent == 100 * step // total, line

    class Terminal:
        text = ""

        def isatty(self):
            return True

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    stream = Terminal()
    log = RunLog(str(tmp_path), total, total, 0, stream=stream)
    log.step_done(12)
    log.close()
    drawn = stream.text.replace("\r", "").replace("\x1b[K", "")
    assert shape(terminal) == shape(drawn)
    printed = [line for line in toy_run.splitlines() if re.match(r"step \d+/\d+ \(\d+%\)  epoch", line)]
    assert printed and shape(logged) == shape(printed[-1])


def test_the_progress_line_docs_watching_quotes_has_the_numbers_of_the_toy_run_on_disk():
    path = os.path.join(ROOT, "runs/toy/refine/clip_refine/seed0/log.jsonl")
    if not os.path.exists(path):
        pytest.skip("no toy run on disk (make reproduce-table1 makes runs/toy/refine/clip_refine/seed0)")
    logged = watching_lines()[1]
    step = int(re.match(r"step (\d+)/", logged).group(1))
    record = next(r for r in map(json.loads, open(path)) if r["split"] == "train" and r["step"] == step)
    values = dict(re.findall(r"  ([a-z_]+) (-?[\d.e+-]+)(?=  )", logged))
    for key in ("loss", "infonce", "logit_scale", "rafa", "hycd"):
        assert values[key] == f"{record[key]:.4g}", key
    assert values["lr"] == f"{record['lr']:.3g}"


def test_the_evaluation_output_docs_results_quotes_is_the_pretrained_row_of_the_readmes_table():
    """docs/results.md quotes what evaluate.py prints for the toy CLIP; `make readme-results` writes that model's row
    of the README's Table 1 from the same files: the two agree."""
    (quoted,) = [output for where, command, output, _ in SHOWN
                 if where.startswith("docs/results.md") and command.startswith("python evaluate.py") and output]
    records = [json.loads(line) for line in quoted if line.startswith("{")]
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = readme.split("<!-- begin results/toy/table1_refine.md -->")[1].split("<!-- end")[0]
    header = next(line for line in table.splitlines() if line.startswith("| Method |"))
    row = next(line for line in table.splitlines() if line.startswith("| Pre-trained |"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    expected = {}
    for r in records:
        metrics = r["metrics"]
        if r["task"] == "zeroshot_classification":
            expected[r["dataset"]] = f"{100 * metrics['acc1']:.2f}"
        elif r["task"] == "zeroshot_retrieval" and r["dataset"] == "coco_val":
            expected["R@1 T→I"] = f"{100 * metrics['image_retrieval_recall@1']:.2f}"
            expected["R@1 I→T"] = f"{100 * metrics['text_retrieval_recall@1']:.2f}"
        elif r["task"] == "modality_gap":
            expected.update({k: f"{v:.3f}" for k, v in metrics.items() if k in cells})
    assert len(expected) >= 9 and {k: cells[k] for k in expected} == expected


def test_the_readme_and_docs_results_name_the_commit_and_cpu_of_the_run_behind_the_wall_time_block():
    readme, results = (" ".join(open(os.path.join(ROOT, p), encoding="utf-8").read().split())
                       for p in ("README.md", "docs/results.md"))
    said = [re.search(r"of `make reproduce-table1` of commit ([0-9a-f]{7,}) \(`[^)]*`\) on 2 cores of an (.+?);",
                      readme),
            re.search(r"of `make reproduce-table1` of commit ([0-9a-f]{7,}) \(`[^`]*`, 2 cores of an (.+?);", results)]
    assert all(said), "the README and docs/results.md say which commit and CPU their result blocks came from"
    (commit,) = {m.group(1) for m in said}
    assert len({m.group(2) for m in said}) == 1
    wall_time = results.split("<!-- begin results/toy/bench_reproduce.md -->")[1]
    assert re.search(rf"fresh clone of {commit}", wall_time)


def test_the_cost_the_readme_states_is_the_wall_time_blocks():
    readme = " ".join(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().split())
    results = open(os.path.join(ROOT, "docs/results.md"), encoding="utf-8").read()
    block = results.split("<!-- begin results/toy/bench_reproduce.md -->")[1].split("<!-- end")[0]
    commit = re.search(r"fresh clone of ([0-9a-f]{7})", block).group(1)
    wall = re.search(r"\*\*(\d+ min \d+ s)\*\*", block).group(1)
    cpu_s = re.search(r"\*\* wall time, ([\d,]+) CPU seconds", block).group(1)
    rows = [int(row.split("|")[-2].split()[0]) for row in block.splitlines() if re.match(r"\| .* s \|$", row)]
    assert abs(sum(rows) - int(cpu_s.replace(",", ""))) <= len(rows) / 2  # the steps' rounded seconds add up to it
    stated = re.search(r"The whole run \(commit ([0-9a-f]{7})\) is ([\d,]+) CPU-seconds of work .*?: (\d+ min \d+ s) of "
                       r"wall time", readme)
    assert stated and stated.groups() == (commit, cpu_s, wall)
