"""slurm/chain.py against make itself, and (marked slurm) the whole toy reproduction on a real SLURM.

make's own account of a run is read from `make -n --trace` (each target's recipe lines, split by the shell's rules)
and `make -p` (each target's prerequisites); the chain's plan, which make's planning mode records (slurm/record.py),
must be the same steps with the same argv, each job waiting for exactly the jobs of its prerequisites.
"""
import functools
import json
import multiprocessing
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

import refine
from slurm import chain, record
from slurm.cluster import ROOT, LaunchError
from slurm.job import RUNNABLE, STAGES

TRACE = re.compile(r"^Makefile:\d+: (?:update )?target '([^']+)'")
CASES = {
    "toy": [],
    "toy, seeds and every override": ["SEEDS=0 1", "OVERRIDES=num_workers=0", "TRAIN_OVERRIDES=max_steps=3 lr=1e-4",
                                      "PROCLIP_OVERRIDES=max_images=500", "EMBED_ARGS=--part 0 --num-parts 2"],
    "toy, ProCLIP only": ["PAPERS=proclip", "SEEDS=4"],
    "paper": ["PRESET=paper", "DATA_ROOT=/nonexistent/data", "WEIGHTS_DIR=/nonexistent/weights"],
    "paper, CLIP-Refine only, two seeds": ["PRESET=paper", "PAPERS=refine", "SEEDS=0 1",
                                           "TRAIN_OVERRIDES=max_steps=2 batch_size=4"],
}


@pytest.fixture(autouse=True)
def no_parent_make(monkeypatch):
    """Under `make test` the chain would take that make's variables (VENV=...); these tests give their own."""
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        monkeypatch.delenv(name, raising=False)


def make(*args, cwd=ROOT, check=True):
    out = subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")})
    assert out.returncode == 0 or not check, out.stderr
    return out.stdout


def make_recipes(*args, cwd=ROOT):
    """[(target, [argv, ...])] of the targets whose recipe runs something, in make's order, from `make -n --trace`:
    a recipe line continues after a backslash-newline and is split as the shell splits it."""
    steps = []
    for line in make("-n", "--trace", "PYTHON=python", *args, cwd=cwd).replace("\\\n", " ").splitlines():
        if TRACE.match(line):
            steps.append((TRACE.match(line).group(1), []))
        elif line.strip():
            steps[-1][1].append(shlex.split(line))
    return [(target, commands) for target, commands in steps if commands]


def make_prerequisites(*args, cwd=ROOT):
    """{target: its prerequisites, normal and order-only} of every target in make's database (`make -p -n`)."""
    found = {}
    for line in make("-p", "-n", "PYTHON=python", *args, cwd=cwd).splitlines():
        target, sep, rest = line.partition(":")
        if sep and rest[:1] in ("", " ") and not line.startswith(("#", "\t", " ")) and "=" not in rest[:2]:
            found.setdefault(target, [w for w in rest.split() if w != "|"])
    return found


def make_graph(*args, cwd=ROOT):
    """{target: the targets whose recipes it waits for} of every target whose recipe runs something, from make
    alone: its prerequisites, and through a prerequisite that runs nothing, that one's prerequisites."""
    prerequisites, recipes = make_prerequisites(*args, cwd=cwd), dict(make_recipes(*args, cwd=cwd))

    def waits_for(need):
        if need in recipes:
            return [need]
        return [j for n in prerequisites.get(need, []) for j in waits_for(n)]

    return {t: list(dict.fromkeys(j for n in prerequisites[t] for j in waits_for(n))) for t in recipes}


@functools.lru_cache(maxsize=None)
def _plan(variables, goal, skip_done):
    return chain.plan([*variables, "PYTHON=python"], goal=goal, skip_done=skip_done)


def plan(variables, goal=chain.GOAL, skip_done=False):
    """chain.plan with PYTHON=python, as make_recipes has it (each plan made once: the tests only read it). Every
    step, as `make -B`, unless skip_done: what this checkout has made already (a run of make reproduce-table1)
    must not change what the tests compare."""
    return _plan(tuple(variables), goal, skip_done)


@pytest.mark.parametrize("case", CASES)
def test_every_recipe_of_make_is_one_job_with_its_whole_argv(case):
    jobs, _ = plan(CASES[case])
    assert [(job.target, job.step.commands) for job in jobs] == make_recipes("-B", "reproduce-table1", *CASES[case])
    commands = [shlex.join(argv) for job in jobs for argv in job.step.commands]
    assert len(set(commands)) == len(commands), "every command once"
    chain.check_configs(jobs)  # every stage's config resolves as its job will resolve it


@pytest.mark.parametrize("case", ["toy, seeds and every override", "paper"])
def test_each_job_waits_for_exactly_the_jobs_of_its_prerequisites(case):
    variables = CASES[case]
    jobs, _ = plan(variables)
    graph = make_graph("-B", "reproduce-table1", *variables)
    by_target = {job.target: job for job in jobs}
    assert by_target.keys() == graph.keys()
    for job in jobs:
        assert job.after == graph[job.target], job.target
        assert all(by_target[a].level < job.level for a in job.after)
        ancestors, todo = set(), list(job.after)
        while todo:
            ancestors.add(todo[-1])
            todo += [a for a in by_target[todo.pop()].after if a not in ancestors]
        # what make runs to make this target alone is this job and the jobs it waits for, transitively
        assert {t for t, _ in make_recipes("-B", job.target, *variables)} == ancestors | {job.target}, job.target


def test_seeds_and_overrides_reach_the_commands_they_reach_locally():
    jobs, _ = plan(CASES["toy, seeds and every override"])
    command = {job.target: " ".join(shlex.join(a) for a in job.step.commands) for job in jobs}
    # one job trains a row's seeds (as one process does locally), stage 2 of seed S from stage 1 of seed S
    assert "objective=clip_refine 'seeds=[0,1]' 'run_dir=runs/toy/refine/clip_refine/seed{seed}'" in command[
        "runs/toy/refine/clip_refine/seed0/model.pt"]
    assert "'seeds=[0,1]' 'run_dir=runs/toy/proclip/stage2/seed{seed}' " \
           "'adapter=runs/toy/proclip/stage1/seed{seed}/model.pt'" in command["runs/toy/proclip/stage2/seed0/model.pt"]
    assert "'max_steps=3' 'lr=1e-4'" not in command["embed-cache"]  # shlex.join quotes nothing here
    trained = [t for t, job in ((j.target, j) for j in jobs) if job.resources == "training"]
    assert len(trained) == 1 + 6 + 3 and not any("seed1" in t for t in trained)
    for target in trained[1:]:  # the toy CLIP's pre-training takes no overrides, as locally
        assert "max_steps=3 lr=1e-4" in command[target] and "num_workers=0" in command[target]
    assert "max_images=500" in command["embed-cache"] and "--part 0 --num-parts 2" in command["embed-cache"]
    assert "max_steps=3" not in command["results/toy/pretrained/done"]
    assert command["table1-refine"].endswith("-m tools.tables table refine results/toy --seeds 0,1")


def test_make_passes_its_variables_to_the_chain_it_runs():
    variables = CASES["toy, seeds and every override"]
    out = make("reproduce-table1", "CLUSTER=slurm", "SLURM_ARGS=--dry-run", f"PYTHON={sys.executable}", *variables)
    printed = sorted(shlex.split(line) for line in out.splitlines() if line.startswith(" " * 9))
    expected = sorted(argv for _, commands in make_recipes("reproduce-table1", *variables,  # what is left to do
                                                           f"PYTHON={sys.executable}") for argv in commands)
    assert printed == expected and "SEEDS=0 1" in out


def test_the_chain_runs_every_registered_program_with_its_resources():
    """The Makefile, the registry of slurm/job.py and the jobs' resources agree: the toy and paper plans together run
    every stage and tool, nothing else; a job that trains gets the training resources (the GPUs), one that evaluates
    or embeds one process with at most one GPU, the others no GPU."""
    jobs = plan(CASES["toy"])[0] + plan(CASES["paper"])[0]
    modules = {job.target: [chain.parse_command(argv, job.target)[0] for argv in job.step.commands] for job in jobs}
    assert set().union(*modules.values()) == set(RUNNABLE)
    for job in jobs:
        kinds = {STAGES.get(m, "single" if m == "tools.fill_cache" else "cpu") for m in modules[job.target]}
        assert job.resources == max(kinds, key=["cpu", "single", "training"].index), job.target


def test_what_is_done_is_left_out_and_waited_for_by_nobody(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "results"
    done = [runs / "pretrain/model.pt", runs / "refine/rafa/seed0/model.pt", results / "rafa/seed0/done",
            results / "pretrained/done"]
    for path in done:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    variables = ["SEEDS=0", f"RUNS={runs}", f"RESULTS={results}"]
    jobs, every = plan(variables, skip_done=True)
    assert [(job.target, job.step.commands) for job in jobs] == make_recipes("reproduce-table1", *variables)
    targets = {job.target: job for job in jobs}
    assert not targets.keys() & {str(path) for path in done} and {str(path) for path in done} <= every.keys()
    world = ["data/toy/.done"] if "data/toy/.done" in targets else []  # the world of this checkout may be there
    assert targets[f"{runs}/refine/contrastive/seed0/model.pt"].after == world  # the toy CLIP is done
    assert f"{results}/rafa/seed0/done" not in targets["table1-refine"].after
    assert sorted({job.level for job in jobs}) == list(range(1, max(job.level for job in jobs) + 1))


def test_a_rows_seeds_are_one_job_that_makes_them_all_even_with_one_seed_done(tmp_path):
    results = tmp_path / "results"
    (results / "rafa/seed0").mkdir(parents=True)
    (results / "rafa/seed0/done").touch()
    variables = ["SEEDS=0 1", f"RUNS={tmp_path / 'runs'}", f"RESULTS={results}"]
    jobs, every = plan(variables, skip_done=True)
    assert [(job.target, job.step.commands) for job in jobs] == make_recipes("reproduce-table1", *variables)
    (row,) = [job for job in jobs if job.target.startswith(f"{results}/rafa/")]
    assert {row.target, *row.step.also_makes} == {f"{results}/rafa/seed0/done", f"{results}/rafa/seed1/done"}
    (command,) = row.step.commands
    (seeds,) = [word for word in command if word.startswith("seeds=")]
    trained = f"{tmp_path}/runs/refine/rafa/seed0/model.pt"  # the row's training job, which makes both seeds too
    assert seeds == "seeds=[0,1]" and row.after[0] == trained and trained.replace("seed0", "seed1") not in row.after
    (training,) = [job for job in jobs if job.target == trained]
    assert training.step.also_makes == [trained.replace("seed0", "seed1")] and "seeds=[0,1]" in training.step.commands[0]
    (table,) = [job for job in jobs if job.target == "table1-refine"]
    assert row.target in table.after and len(table.after) == len(set(table.after)) == 1 + len(refine.OBJECTIVES)
    assert every[f"{results}/rafa/seed1/done"] is every[f"{results}/rafa/seed0/done"]


def test_a_command_that_is_not_a_python_stage_or_module_is_refused_with_its_target():
    with pytest.raises(LaunchError, match=r"the step results/toy/investigate/pretrained/done runs `mkdir -p "
                                          r"results/toy/investigate`, which is not a python stage or module"):
        plan(["SEEDS=0"], goal="investigate-gap")
    with pytest.raises(LaunchError, match="the step tests runs `python -m pytest -q`, which a SLURM job cannot run"):
        chain.parse_command(["python", "-m", "pytest", "-q"], "tests")


def test_a_prerequisite_that_records_nothing_is_refused():
    lonely = ["--eval=lonely: results/toy/pretrained/done", "--eval=.PHONY: lonely",
              "--eval=after-lonely: lonely ; @$(RUN) $(PYTHON) -m tools.tables table refine results/toy"]
    with pytest.raises(LaunchError, match="the step after-lonely needs lonely, which is neither a step .* nor a file: "
                                          r"give its rule the recipe line `@\$\(RUN\)`"):
        plan(lonely, goal="after-lonely")


def _append_lines(path, n):
    for i in range(n):
        record.record(path, f"t{i}", "a b", ["python", "x.py", "y" * 5000])


def test_recorded_lines_never_interleave_under_parallel_make(tmp_path):
    path = str(tmp_path / "plan.jsonl")
    workers = [multiprocessing.Process(target=_append_lines, args=(path, 50)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    with open(path) as f:
        assert len([json.loads(line) for line in f]) == 200


def test_papers_make_only_that_papers_steps_and_data():
    refine_only = [target for target, _ in make_recipes("-B", "reproduce-table1", "PAPERS=refine")]
    assert "table1-refine" in refine_only and not any("proclip" in t or "llm2clip" in t for t in refine_only)
    assert "embed-cache" not in refine_only
    for goal in ("check-data", "data"):
        ((_, (argv,)),) = make_recipes("-B", goal, "PRESET=paper", "PAPERS=refine")
        papers = argv.index("--papers")
        assert argv[papers + 1] == "refine" and argv[papers + 2:papers + 3] != ["proclip"]


def test_the_probes_table_comes_with_every_paper_and_the_language_ceiling_with_proclip():
    steps = dict(make_recipes("-B", "reproduce-table1"))
    assert ["python", "-m", "tools.tables", "table", "probes", "results/toy", "--seeds", "0,1,2"] in \
        steps["tables-probes"]
    assert steps["results/toy/language_ceiling.json"][0][:4] == ["python", "-m", "tools.toylanguages", "ceiling"]
    assert steps["data/toy/probes/.done"][0][-2:] == ["--only", "probes"]
    refine_only = dict(make_recipes("-B", "reproduce-table1", "PAPERS=refine"))
    assert "tables-probes" in refine_only and "results/toy/language_ceiling.json" not in refine_only
    paper = dict(make_recipes("-B", "tables-probes", "PRESET=paper", "PAPERS=proclip"))
    assert paper["tables-probes"][0][-3:] == ["--clip-row", "clip", "--no-claims"]
    assert not any("toylanguages" in " ".join(argv) for commands in paper.values() for argv in commands)


def test_the_dry_run_shows_the_plan_then_every_data_problem(capsys):
    chain.main(["--preset", "paper", "--data-root", "/nonexistent/data", "PAPERS=refine", "PYTHON=python",
                "--dry-run"])
    out = capsys.readouterr().out
    said = re.search(r"^(\d+) data problem\(s\); nothing is submitted until they are fixed:\n((  .*\n)*)", out, re.M)
    assert out.index("level 1") < said.start()
    problems = said.group(2).splitlines()
    assert int(said.group(1)) == len(problems) > 1  # every problem, not only the missing root
    assert problems[0].startswith("  DATA_ROOT /nonexistent/data does not exist")
    assert any("CLIP-Refine training data: /nonexistent/data/coco/annotations" in p for p in problems)
    assert "check --data-root /nonexistent/data --papers refine" in out  # the data check is the first job


# -----------------------------------------------------------------------------------------------------------------
# on a real SLURM
def _why_not_submit_jobs():
    if shutil.which("sbatch") is None:
        return "no sbatch on the PATH: start a SLURM with `slurm/local_cluster.sh up`, then run `make test-slurm`"
    if not os.environ.get("POSTCLIP_SLURM_TESTS"):
        return "they submit jobs to the SLURM on the PATH: run them with `make test-slurm` (POSTCLIP_SLURM_TESTS=1)"
    return ""


# Smaller than configs/toy/world.yaml, for the time CI has (the tables' numbers then mean little; the test compares
# them byte for byte, not with the README's).
SMALL_WORLD = dict(n_pretrain=3000, n_coco_train=400, n_coco_val=200, zeroshot_per_class=10,
                   zeroshot_min_per_task=100, zeroshot_fine_per_class=4)
E2E_VARIABLES = ["SEEDS=0", f"PYTHON={sys.executable}", "SLURM_CONFIG=slurm/local.yaml"]


def copy_of_the_repository(folder):
    """The checkout's files (tracked and not ignored) in folder, with the small toy world: a clone with its own
    data/, runs/, results/ and cache/."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(folder, name))
    world = folder / "configs/toy/world.yaml"
    world.write_text(yaml.safe_dump({**yaml.safe_load(world.read_text()), **SMALL_WORLD}))
    return folder


def tables(folder):
    results = folder / "results/toy"
    return {p.name: p.read_bytes() for p in sorted(results.iterdir()) if p.suffix in (".md", ".csv")}


def submit_chain(folder, transcript):
    """`make reproduce-table1 CLUSTER=slurm` in folder, the command and what it printed added to transcript;
    -> {target: job id}."""
    command = ["reproduce-table1", "CLUSTER=slurm", *E2E_VARIABLES]
    out = make(*command, cwd=folder)
    transcript.append(f"$ make {shlex.join(command)}\n{out}")
    return dict((m.group(2), m.group(1)) for m in re.finditer(r"^  job (\d+) +level \d+ +(\S+)", out, flags=re.M))


def scontrol(job_id):
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


def wait_for(jobs, timeout_s=1800, on_poll=None):
    """Until every job has left the queue; -> {target: scontrol's record of its end}. Polls scontrol, which keeps a
    finished job for MinJobAge (slurm/local_cluster.sh: an hour)."""
    ended, start = {}, time.time()
    while len(ended) < len(jobs):
        assert time.time() - start < timeout_s, f"still running after {timeout_s} s: {set(jobs) - set(ended)}"
        for target, job_id in jobs.items():
            if target not in ended:
                info = scontrol(job_id)
                if info["JobState"] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING"):
                    ended[target] = info
        if on_poll:
            on_poll()
        time.sleep(2)
    return ended


def assert_ran_in_order(ended, graph):
    """Every job completed, none before the jobs it waits for ended."""
    for target, after in graph.items():
        assert ended[target]["JobState"] == "COMPLETED", (target, ended[target])
        for before in after:  # ISO timestamps
            assert ended[target]["StartTime"] >= ended[before]["EndTime"], (target, before)


@pytest.mark.slurm
@pytest.mark.skipif(bool(_why_not_submit_jobs()), reason=_why_not_submit_jobs())
def test_the_toy_reproduction_on_slurm_gives_the_local_tables_byte_for_byte(capsys):
    """`make reproduce-table1 CLUSTER=slurm` against `make reproduce-table1`, each in its own copy of the repository
    (own world, runs, results and embedding cache), with SEEDS=0 and a smaller toy world (SMALL_WORLD) so that the
    test fits in CI's time; everything else as in the toy preset. Then a second chain, with the ProCLIP runs and
    every evaluation to do again: its ProCLIP stage-2 job is cancelled (scancel) while it trains, SLURM cancels the
    jobs that wait for it, and the same command submitted again submits exactly what make would run then (the
    missing steps, and the phony ones that always run: embed-cache and the tables). Both times the tables are the
    local run's, byte for byte. The copies are in a folder of their own (deleted when the test passes): pytest's
    tmp_path is one of the last three sessions' and may go while the jobs still run."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="postclip-chain-test-"))
    local, on_slurm = copy_of_the_repository(folder / "local"), copy_of_the_repository(folder / "slurm")
    times = {}
    start = time.time()
    make("reproduce-table1", *E2E_VARIABLES, cwd=local)
    times["local run"] = time.time() - start
    expected = tables(local)
    assert {"table1_refine.md", "table1_proclip.csv", "table2_proclip.md"} <= expected.keys()

    graph = make_graph("-B", "reproduce-table1", "SEEDS=0", cwd=on_slurm)
    start = time.time()
    transcript = []
    jobs = submit_chain(on_slurm, transcript)
    assert jobs.keys() == graph.keys(), transcript[-1]
    progress = shlex.split(transcript[-1].split("progress: ")[1].splitlines()[0])
    transcript.append(f"$ {shlex.join(progress)}\n" + subprocess.run(progress, capture_output=True, text=True).stdout)
    ended = wait_for(jobs)
    times["first chain"] = time.time() - start
    assert_ran_in_order(ended, graph)
    assert tables(on_slurm) == expected

    # the second chain: ProCLIP and every evaluation again; stage 2 is cancelled while it trains
    shutil.rmtree(on_slurm / "runs/toy/proclip")
    shutil.rmtree(on_slurm / "results/toy")
    start = time.time()
    jobs = submit_chain(on_slurm, transcript)
    stage2 = "runs/toy/proclip/stage2/seed0/model.pt"
    stage2_log = on_slurm / "runs/toy/proclip/stage2/seed0/log.jsonl"
    cancelled = []

    def cancel_once_it_trains():
        if not cancelled and stage2_log.exists() and stage2_log.read_text().strip():
            subprocess.run(["scancel", jobs[stage2]], check=True)
            transcript.append(f"$ scancel {jobs[stage2]}   # {stage2}, while it trains\n")
            cancelled.append(jobs[stage2])

    ended = wait_for(jobs, on_poll=cancel_once_it_trains)
    waiting_for_stage2 = {"results/toy/proclip/seed0/done", "tables-proclip", "tables-probes", "curves"}
    assert cancelled and {t for t, e in ended.items() if e["JobState"] != "COMPLETED"} == {stage2,
                                                                                          *waiting_for_stage2}
    assert ended[stage2]["JobState"] == "CANCELLED" and not (on_slurm / stage2).exists()
    assert (on_slurm / "runs/toy/proclip/stage2/seed0/checkpoint.pt").exists(), "saved on SIGTERM"
    left = {target for target, _ in make_recipes("reproduce-table1", "SEEDS=0", cwd=on_slurm)}
    assert left == {stage2, *waiting_for_stage2, "embed-cache", "table1-refine"}
    rerun = submit_chain(on_slurm, transcript)
    assert rerun.keys() == left, transcript[-1]
    ended = wait_for(rerun)
    times["second chain, cancelled and submitted again"] = time.time() - start
    assert_ran_in_order(ended, {t: [a for a in after if a in rerun] for t, after in graph.items() if t in rerun})
    logs = (on_slurm / "runs/toy/slurm").glob(f"{chain.job_name(stage2)}/{rerun[stage2]}_*.out")
    assert "resumed from" in next(logs).read_text()
    assert tables(on_slurm) == expected
    with capsys.disabled():  # what it did, for the record
        print("\n" + "".join(transcript) + " ".join(f"{name}: {seconds:.0f} s;" for name, seconds in times.items()))
    shutil.rmtree(folder)


# -----------------------------------------------------------------------------------------------------------------
# the paper preset's chain on the fake datasets of `make test-paper`, after its local run (make sets POSTCLIP_PAPER_SMOKE)
SMOKE = os.environ.get("POSTCLIP_PAPER_SMOKE", "")
after_the_smoke_run = pytest.mark.skipif(not SMOKE, reason="runs after `make test-paper`'s local run")


def smoke_variables(**changed):
    """The make variables of `make test-paper`'s run (SMOKE_VARS, split as its recipe's shell splits them)."""
    values = dict(v.split("=", 1) for v in shlex.split(chain.make_values(["SMOKE_VARS"])["SMOKE_VARS"]))
    return [f"{k}={v}" for k, v in {**values, "PYTHON": sys.executable, **changed}.items()]


@pytest.mark.paper
@after_the_smoke_run
def test_the_paper_chain_run_here_gives_the_smoke_runs_tables(tmp_path):
    """The paper preset's chain after the smoke run, with one training run (CLIP-Refine), two evaluations and the
    tables (the probes' included) to do again in other RUNS and RESULTS (the other runs linked to the smoke run's):
    `make reproduce-table1 CLUSTER=slurm` with cluster=local runs each job here through slurm/job.py, one after the
    other, and the tables are the smoke run's, byte for byte. Its dry run lists no data problem, and every stage's
    config resolves."""
    smoke_runs = chain.make_values(["RUNS"], smoke_variables())["RUNS"]
    runs, results = tmp_path / "runs", tmp_path / "results"
    subprocess.run(["cp", "-rs", os.path.join(ROOT, smoke_runs), str(runs)], check=True)  # links, not copies
    shutil.rmtree(runs / "refine/clip_refine")
    shutil.copytree(os.path.join(ROOT, SMOKE), results)
    for redo in ("llm2clip/seed0", "clip_refine/seed0", "table1_refine.md", "table1_proclip.md", "table_probes.md"):
        subprocess.run(["rm", "-r", str(results / redo)], check=True)
    variables = smoke_variables(RUNS=str(runs), RESULTS=str(results))
    jobs, _ = chain.plan(variables)
    assert {job.target for job in jobs} == {"check-data", "embed-cache", f"{runs}/refine/clip_refine/seed0/model.pt",
                                            f"{results}/llm2clip/seed0/done", f"{results}/clip_refine/seed0/done",
                                            "table1-refine", "tables-proclip", "tables-probes", "curves"}
    dry_run = make("reproduce-table1", "CLUSTER=slurm", "SLURM_ARGS=--dry-run", *variables)
    assert "data problem" not in dry_run and "level 1" in dry_run
    out = make("reproduce-table1", "CLUSTER=slurm", "SLURM_CONFIG=slurm/local.yaml", "SLURM_ARGS=--cluster local",
               *variables)
    assert out.count(": done in ") == len(jobs), out
    made = {p.name: p.read_bytes() for p in sorted(results.iterdir()) if p.suffix in (".md", ".csv")}
    assert made and made == {p.name: p.read_bytes() for p in sorted(pathlib.Path(ROOT, SMOKE).iterdir())
                             if p.suffix in (".md", ".csv")}


@pytest.mark.paper
@after_the_smoke_run
def test_papers_refine_needs_only_clip_refines_data(tmp_path):
    """A DATA_ROOT with CLIP-Refine's data alone (COCO and its sets, linked from the smoke run's):
    check-data and the chain's plan with PAPERS=refine find nothing missing; with both papers, ProCLIP's data is."""
    from tools import paper_data

    smoke_data = chain.make_values(["DATA_ROOT"], smoke_variables())["DATA_ROOT"]
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(os.path.join(ROOT, smoke_data, "coco"), data / "coco")
    for key in paper_data.paper_datasets(["refine"]):
        (data / paper_data.converted(key)).parent.mkdir(exist_ok=True)
        os.symlink(os.path.join(ROOT, smoke_data, paper_data.converted(key)), data / paper_data.converted(key))
    check = ["check-data", "PRESET=paper", f"DATA_ROOT={data}", f"PYTHON={sys.executable}"]
    make(*check, "PAPERS=refine")
    both = subprocess.run(["make", "--no-print-directory", *check], cwd=ROOT, capture_output=True, text=True)
    assert both.returncode != 0 and "recaption/train.csv not found" in both.stderr
    variables = smoke_variables(DATA_ROOT=str(data), PAPERS="refine")
    out = make("reproduce-table1", "CLUSTER=slurm", "SLURM_ARGS=--dry-run", *variables)
    assert "data problem" not in out and "table1-refine" in out and "proclip" not in out.split("\n", 1)[1]
