"""`make reproduce-table1 CLUSTER=slurm`: the Makefile's steps as SLURM jobs, each after the jobs of the steps it needs.

    make reproduce-table1 CLUSTER=slurm SLURM_CONFIG=slurm/local.yaml SEEDS=0   # submits, prints the jobs, returns
    make reproduce-table1 CLUSTER=slurm SLURM_ARGS=--dry-run                    # the plan; nothing submitted
    python -m slurm.chain --preset paper --data-root /data/postclip --dry-run   # the same, without make
    python -m slurm.chain PRESET=paper PAPERS=refine SEEDS="0 1"                # make's variables, as with make

The plan is make's own. Every command of a step in the Makefile starts with $(RUN), and `make -B reproduce-table1
PLAN=FILE` records each one as {target, needs, argv} (slurm/record.py) instead of running it. One job per step (one
target's recipe: its commands, in order); a job waits (afterok) for exactly the jobs of the steps it needs: make's
prerequisites of its target, normal and order-only, seen through targets that run nothing (evaluate-refine) and
through steps that are done. What is done (left out by `make reproduce-table1 PLAN=FILE`, without -B) is not
submitted. A job's level, 1 + the highest level of the jobs it waits for, is for display only.

Make's variables: those of the make command line that ran this (make passes them on in MAKEFLAGS), then VAR=value
arguments (--preset P is PRESET=P, --data-root D is DATA_ROOT=D). SLURM options as slurm/launcher.py
(slurm/cluster.yaml); cluster=local runs the jobs here, one after the other, through submitit's LocalExecutor.
Logs: RUNS/slurm/STEP/.
"""
import argparse
import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

from common.config import ConfigError
from slurm.cluster import (ROOT, LaunchError, add_slurm_arguments, array_id, check_slurm, make_executor,
                           progress_command, slurm_config, submit)
from slurm.job import RUNNABLE, STAGES, StageJob
from slurm.launcher import output_dir, parse_args
from tools import paper_data

GOAL = "reproduce-table1"
# The resources of a job (make_executor in slurm/cluster.py): a stage's own (STAGES), one GPU for the embedding
# cache, none for the other tools; a job with several commands gets the most any of them needs.
RESOURCES = ("cpu", "single", "training")
TOOL_RESOURCES = {"tools.fill_cache": "single"}


@dataclasses.dataclass
class Step:
    """One target's recipe, as make's planning mode recorded it."""
    target: str
    needs: list                                          # its prerequisites, normal and order-only
    commands: list = dataclasses.field(default_factory=list)  # argv lists; none: it only groups its prerequisites
    also_makes: list = dataclasses.field(default_factory=list)  # the other targets of the recipe (a row's seeds)


@dataclasses.dataclass
class Job:
    """A step left to do: one SLURM job."""
    step: Step
    after: list        # the targets of the jobs it waits for
    level: int

    @property
    def target(self):
        return self.step.target

    @property
    def name(self):
        return job_name(self.target)

    @property
    def resources(self):
        """training (every GPU of the job), single (one process, at most one GPU), cpu (one process, no GPU)."""
        modules = [parse_command(argv, self.target)[0] for argv in self.step.commands]
        return max((STAGES.get(m) or TOOL_RESOURCES.get(m, "cpu") for m in modules), key=RESOURCES.index)


def job_name(target):
    """The SLURM job name of a step, also the folder of its logs under RUNS/slurm/."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", target)


# -----------------------------------------------------------------------------------------------------------------
# asking make
def parent_variables():
    """The variables of the make command line that ran this process, in make's own encoding (MAKEFLAGS after --)."""
    return (" " + os.environ.get("MAKEFLAGS", "")).partition(" -- ")[2]


def run_make(args, variables=()):
    """make ARGS VARIABLES in the repository root, with the parent make's variables but none of its flags (-j, -B,
    -n, the jobserver); CLUSTER=local, so that reproduce-table1 is the local run's. -> stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    if parent_variables():
        env["MAKEFLAGS"] = "-- " + parent_variables()
    command = ["make", "--no-print-directory", "-s", *args, *variables, "CLUSTER=local"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise LaunchError(f"`{shlex.join(command)}` failed:\n{out.stderr.strip()}")
    return out.stdout


def make_values(names, variables=()):
    """{name: value} of make variables, as the Makefile sets them with these variables."""
    show = "".join(f"$(info {name}=$({name}))" for name in names)  # expanded when the recipe runs: after parsing
    out = run_make(["--eval", f"show-values: ; @:{show}", "show-values"], variables)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def record_steps(goal, variables=(), everything=True):
    """{target: Step} of `make [-B] goal PLAN=FILE` (everything: -B, as if nothing were done), in make's order; the
    targets a step also makes map to it too."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "plan.jsonl")
        open(path, "w").close()
        run_make([*(["-B"] if everything else []), goal, f"PLAN={path}", f"PLAN_PYTHON={sys.executable}"],
                 variables)
        with open(path) as f:
            records = [json.loads(line) for line in f]
    steps = {}
    for record in records:
        step = steps.setdefault(record["target"], Step(record["target"], record["needs"],
                                                       also_makes=record["also_makes"]))
        for target in record["also_makes"]:
            steps.setdefault(target, step)
        if record["argv"]:
            step.commands.append(record["argv"])
    return steps


def distinct_steps(steps):
    """The Steps of {target: Step}, each once: a step that also makes other targets is under each of them."""
    return [step for target, step in steps.items() if target == step.target]


def parse_command(argv, target):
    """[PYTHON, "refine.py", ARGS...] -> ("refine", ARGS); [PYTHON, "-m", "tools.toyworld", ARGS...] ->
    ("tools.toyworld", ARGS). Refused, naming the target, unless a job can run the module (slurm/job.py)."""
    if len(argv) >= 2 and argv[1].endswith(".py"):
        module, args = argv[1][:-3].replace("/", "."), argv[2:]
    elif len(argv) >= 3 and argv[1] == "-m":
        module, args = argv[2], argv[3:]
    else:
        module, args = None, []
    if module not in RUNNABLE:
        raise LaunchError(f"the step {target} runs `{shlex.join(argv)}`, which a SLURM job cannot run (a job runs "
                          f"`python X.py ...` or `python -m X ...` for X in {', '.join(RUNNABLE)})")
    return module, args


# -----------------------------------------------------------------------------------------------------------------
def plan(variables=(), goal=GOAL, skip_done=True):
    """-> (jobs, every): the steps of `make goal` left to do (skip_done=False: all of them, as `make -B`), as Jobs in
    make's order (each after the jobs it waits for), and every step of `make -B goal` ({target: Step})."""
    every = record_steps(goal, variables, everything=True)
    left = record_steps(goal, variables, everything=False) if skip_done else every
    to_run = {target for target, step in left.items() if step.commands}  # a target a step also makes included
    resolved = {}

    def jobs_for(need, asked_by):
        """The jobs a step that needs `need` waits for: the one of the step that makes it, else (it runs nothing or
        is done) those of its prerequisites; none for a file that no step makes."""
        if need in to_run:
            return [left[need].target]
        if need not in resolved:
            if need in every:
                resolved[need] = list(dict.fromkeys(j for n in every[need].needs for j in jobs_for(n, need)))
            elif os.path.exists(os.path.join(ROOT, need)):
                resolved[need] = []
            else:
                raise LaunchError(f"the step {asked_by} needs {need}, which is neither a step that `make {goal}` "
                                  f"records nor a file: give its rule the recipe line `@$(RUN)`, so that its "
                                  f"prerequisites are recorded")
        return resolved[need]

    jobs = {}
    for step in distinct_steps(left):  # one job per step, not one per target it also makes
        if step.commands:
            after = list(dict.fromkeys(j for need in step.needs for j in jobs_for(need, step.target)))
            for argv in step.commands:  # every command is one a job can run
                parse_command(argv, step.target)
            jobs[step.target] = Job(step, after, 1 + max((jobs[a].level for a in after), default=0))
    return list(jobs.values()), every


def check_configs(jobs):
    """Every stage's config resolves as its job will resolve it: a bad key fails here, before anything is submitted."""
    for job in jobs:
        for argv in job.step.commands:
            module, args = parse_command(argv, job.target)
            if module in STAGES:
                try:
                    output_dir(module, parse_args(module, args))
                except (LaunchError, ConfigError) as e:
                    raise LaunchError(f"the step {job.target}: {e}") from None


SHOWN = ("PRESET", "PAPERS", "SEEDS", "RUNS", "RESULTS")  # the make variables the plan's heading shows


def describe(values):
    return f"`make {GOAL}` (" + ", ".join(f"{name}={values[name]}" for name in SHOWN) + ")"


def print_plan(jobs, every, problems, heading, out=None):
    """The jobs level by level, each with its resources, the jobs it waits for (by number) and its commands."""
    out = out or sys.stdout
    number = {job.target: i for i, job in enumerate(sorted(jobs, key=lambda j: j.level), 1)}
    done = [s for s in distinct_steps(every) if s.commands and not {s.target, *s.also_makes} & number.keys()]
    out.write(f"{heading}: {len(jobs)} job(s); {len(done)} step(s) done already, not submitted\n")
    for level in sorted({job.level for job in jobs}):
        out.write(f"level {level}\n")
        for job in sorted((j for j in jobs if j.level == level), key=lambda j: number[j.target]):
            after = ", ".join(str(number[a]) for a in job.after) or "nothing"
            also = f" (and {' '.join(job.step.also_makes)})" if job.step.also_makes else ""
            out.write(f"  {number[job.target]:>3}  {job.target}{also}  [{job.resources}; after {after}]\n")
            for argv in job.step.commands:
                out.write(f"         {shlex.join(argv)}\n")
    if problems:
        out.write(f"{len(problems)} data problem(s); nothing is submitted until they are fixed:\n")
        out.writelines(f"  {p}\n" for p in problems)
    out.flush()


def submit_plan(jobs, cfg, log_root, out=None):
    """Submit every job after the jobs it waits for (afterok; --kill-on-invalid-dep: if one of them fails, SLURM
    cancels this one instead of keeping it pending). -> {target: submitit job}."""
    out, submitted = out or sys.stdout, {}
    for job in jobs:
        executor = make_executor(cfg, os.path.join(log_root, job.name), job.name, job.resources,
                                 sbatch_extra={"kill-on-invalid-dep": "yes"})
        commands = [parse_command(argv, job.target) for argv in job.step.commands]
        after = [submitted[target] for target in job.after]
        (submitted[job.target],) = submit(executor, [StageJob(commands, cfg.max_requeues)], after)
        waits = ",".join(array_id(j) for j in after) or "-"
        out.write(f"  job {submitted[job.target].job_id:<7} level {job.level:<2} {job.target}  (after {waits})\n")
        out.flush()
    return submitted


def run_here(jobs, cfg, log_root, out=None):
    """cluster=local: each job on this machine in turn (submitit's LocalExecutor), stopping at the first failure."""
    out = out or sys.stdout
    for i, job in enumerate(jobs, 1):
        executor = make_executor(cfg, os.path.join(log_root, job.name), job.name, job.resources)
        commands = [parse_command(argv, job.target) for argv in job.step.commands]
        start = time.time()
        (local,) = submit(executor, [StageJob(commands, cfg.max_requeues)])
        try:
            local.result()
        except Exception as e:
            raise LaunchError(f"the step {job.target} failed ({type(e).__name__}); log: {local.paths.stderr}") from e
        out.write(f"  {i}/{len(jobs)} {job.target}: done in {time.time() - start:.0f} s\n")
        out.flush()


def get_args_parser():
    parser = argparse.ArgumentParser("python -m slurm.chain", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variables", nargs="*", metavar="VAR=value", help="make variables (SEEDS, OVERRIDES, ...)")
    parser.add_argument("--preset", help="PRESET=NAME: toy or paper")
    parser.add_argument("--data-root", help="DATA_ROOT=PATH: the paper preset's data")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (the jobs, what each waits for, their "
                                                               "commands, and every data problem); submit nothing")
    add_slurm_arguments(parser)
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    bad = [v for v in args.variables if "=" not in v]
    if bad:
        raise LaunchError(f"{bad[0]!r}: make variables are given as VAR=value")
    variables = [*args.variables, *([f"PRESET={args.preset}"] if args.preset else []),
                 *([f"DATA_ROOT={args.data_root}"] if args.data_root else [])]
    os.chdir(ROOT)  # the Makefile's paths are relative to the repository root; so is every job's working folder
    cfg = slurm_config(args)
    values = make_values([*SHOWN, "DATA_ROOT", "THREADS", "WEIGHTS_DIR", "HF_HUB_CACHE"], variables)
    if not os.path.isdir(f"configs/{values['PRESET']}"):
        raise LaunchError(f"PRESET={values['PRESET']}: there is no configs/{values['PRESET']}")
    problems = []
    if values["PRESET"] == "paper":  # every data path of the chosen papers, before any job is submitted
        problems = paper_data.data_problems(values["DATA_ROOT"], values["PAPERS"].split())
    jobs, every = plan(variables)
    check_configs(jobs)
    if args.dry_run:
        print_plan(jobs, every, problems, f"the plan of {describe(values)}")
        return jobs
    if problems:
        raise LaunchError(f"{len(problems)} data problem(s), nothing submitted:\n  " + "\n  ".join(problems))
    if values["THREADS"]:  # as the Makefile exports it to every local step
        cfg.setup = [*cfg.setup, f"export OMP_NUM_THREADS={values['THREADS']}"]
    if values["WEIGHTS_DIR"]:  # as the Makefile exports them: every job reads the weights there, offline
        cfg.setup = [*cfg.setup, f"export HF_HUB_CACHE={shlex.quote(values['HF_HUB_CACHE'])}", "export HF_HUB_OFFLINE=1"]
    log_root = os.path.join(values["RUNS"], "slurm")
    if not jobs:
        print("nothing to do: every step is done")
        return {}
    if cfg.cluster == "local":
        print(f"running {describe(values)} here, one job after the other: {len(jobs)} job(s)")
        return run_here(jobs, cfg, log_root)
    check_slurm(cfg)
    print(f"submitting {describe(values)} to SLURM: {len(jobs)} job(s), "
          f"{sum(1 for s in distinct_steps(every) if s.commands) - len(jobs)} step(s) done already")
    submitted = submit_plan(jobs, cfg, log_root)
    print(f"progress: {progress_command(submitted.values())}")
    print(f"logs:     {log_root}/STEP/; the tables are printed in the last jobs' logs and written to the RESULTS "
          f"folder")
    return submitted


if __name__ == "__main__":
    try:
        main()
    except (LaunchError, ConfigError, FileNotFoundError) as e:
        print(f"slurm.chain: error: {e}", file=sys.stderr)
        sys.exit(2)
