"""`make reproduce-table1 CLUSTER=slurm`: the whole reproduction as SLURM jobs chained by afterok dependencies.

    python -m slurm.chain --preset toy --slurm-config slurm/local.yaml   # submits, prints the job ids, returns
    python -m slurm.chain --preset paper --dry-run                       # prints the plan, submits nothing

One source of truth: the commands are the Makefile's. `make -n -B reproduce-table1` lists every command of a full
run; this file only groups the Makefile's targets into levels, each level a job array that waits (afterok) for the
levels it depends on:

    world -> toy-clip -> refine runs (array)                         -> evaluations (array) -> tables (array)
                      -> embed-cache -> ProCLIP stage 1, LLM2CLIP -> ProCLIP stage 2 -^

A target's job runs the commands `make -n -B TARGET` lists that no earlier level runs, and the plan is checked
against make before anything is submitted: every command of reproduce-table1 is in exactly one job, and a job waits
for every level whose commands its target needs (see `plan`). As make would, it leaves out what is done already
(`make -n reproduce-table1`); a level with nothing left is skipped. SLURM options: as slurm/launcher.py
(slurm/cluster.yaml). Logs: runs/PRESET/slurm/LEVEL/.
"""
import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys

from tools import paper_data
from common.config import ConfigError
from slurm.cluster import (ROOT, LaunchError, add_slurm_arguments, array_id, check_slurm, make_executor,
                           progress_command, slurm_config, submit)
from slurm.job import STAGES, StageJob
from slurm.launcher import output_dir, parse_args


@dataclasses.dataclass
class Level:
    name: str
    targets: list             # Makefile targets: one job each (the tasks of one array)
    after: tuple = ()         # earlier levels whose jobs must succeed first
    resources: str = "training"  # training | single | cpu (see make_executor in slurm/cluster.py)


def table1_levels(preset):
    """The Makefile targets of `make reproduce-table1`, grouped into levels that can run in parallel."""
    def targets(name):  # one of the Makefile's lists: every run and evaluation, once per seed
        return make_variable(name, preset).split()
    return [
        Level("world", ["world"], resources="cpu"),
        Level("toy-clip", ["toy-clip"], after=("world",)),
        Level("refine", targets("REFINE_RUNS"), after=("toy-clip",)),
        Level("embed-cache", ["embed-cache"], after=("toy-clip",), resources="single"),
        Level("proclip", targets("PROCLIP_STAGE1") + targets("LLM2CLIP"), after=("embed-cache",)),
        Level("proclip-stage2", targets("PROCLIP_STAGE2"), after=("proclip",)),
        Level("evaluate", targets("EVALUATIONS"), after=("refine", "proclip-stage2"), resources="single"),
        Level("tables", ["table1-refine", "tables-proclip"], after=("evaluate",), resources="cpu"),
    ]


# -----------------------------------------------------------------------------------------------------------------
# asking make
def _make(*args, preset):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    command = ["make", "--no-print-directory", *args, f"PRESET={preset}", "PYTHON=python", "CLUSTER=local"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        raise LaunchError(f"`{shlex.join(command)}` failed: {out.stderr.strip()}")
    return out.stdout


def make_variable(name, preset):
    return _make("-s", "--eval", "print-%: ; @echo $($*)", f"print-{name}", preset=preset).strip()


def make_commands(targets, preset, everything=True):
    """The commands make would run for `targets` (everything: as if nothing were done, -B), in make's order."""
    text = _make("-n", *(["-B"] if everything else []), *targets, preset=preset)
    text = re.sub(r"\\\n[ \t]*", " ", text)  # recipe lines continued with a backslash (the next may be empty)
    return [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.startswith("make")]


def parse_command(command):
    """`python refine.py ARGS` -> ("refine", ARGS); `python -m tools.toyworld ARGS` -> ("tools.toyworld", ARGS)."""
    words = shlex.split(command)
    if len(words) >= 3 and words[:2] == ["python", "-m"]:
        return words[2], words[3:]
    if len(words) >= 2 and words[0] == "python" and words[1].endswith(".py"):
        return words[1][:-3], words[2:]
    raise LaunchError(f"the Makefile runs `{command}`, which slurm/chain.py cannot run as a job (only `python X.py` "
                      f"and `python -m X` commands)")


# -----------------------------------------------------------------------------------------------------------------
def plan(levels, preset, goal="reproduce-table1", skip_done=True):
    """-> [(level, [(target, [commands left to run])])], checked against make:
    - every command of `make -n -B goal` is in exactly one target's job;
    - a target's job waits for every level whose commands `make -n -B target` lists (directly or through `after`).
    skip_done: leave out the commands that `make -n goal` would not run (their outputs exist).
    """
    every = make_commands([goal], preset)
    left_to_run = set(make_commands([goal], preset, everything=not skip_done))
    level_of = {}  # command -> the level whose job runs it
    ancestors = {}  # level -> every level it waits for, transitively
    planned = []
    for level in levels:
        ancestors[level.name] = set(level.after).union(*(ancestors[name] for name in level.after))
        jobs = []
        for target in level.targets:
            needs = [c for c in make_commands([target], preset) if c in every]
            own = [c for c in needs if c not in level_of]
            for command in needs:
                if command in level_of and level_of[command] not in ancestors[level.name]:
                    raise LaunchError(f"slurm/chain.py: {target} (level {level.name}) needs `{command}`, which level "
                                      f"{level_of[command]} runs, but does not wait for it; fix the levels' `after`")
            level_of.update((command, level.name) for command in own)
            todo = [c for c in own if c in left_to_run]
            if todo:
                jobs.append((target, todo))
        planned.append((level, jobs))
    missing = [c for c in every if c not in level_of]
    if missing:
        raise LaunchError(f"slurm/chain.py: `make {goal}` runs `{missing[0]}`, which no level's targets cover; add "
                          f"its target to table1_levels")
    return planned


def submit_plan(planned, cfg, log_root, out=sys.stdout):
    """Submit each level's jobs (one job, or one array) after the jobs of the levels it waits for.
    -> {level name: [submitit jobs]} for the levels that had something left to do."""
    submitted, waits_for = {}, {}  # waits_for: level -> the jobs that a level after it must wait for
    for level, jobs in planned:
        after = [job for name in level.after for job in waits_for[name]]
        if not jobs:
            waits_for[level.name] = after  # nothing left to do: its dependents wait for what it waited for
            out.write(f"  {level.name:<15} nothing to run\n")
            continue
        executor = make_executor(cfg, os.path.join(log_root, level.name), level.name, level.resources)
        stage_jobs = [StageJob([parse_command(c) for c in commands], cfg.max_requeues) for _, commands in jobs]
        submitted[level.name] = waits_for[level.name] = submit(executor, stage_jobs, after)
        waited = sorted({array_id(job) for job in after}, key=int)
        dependency = "afterok:" + ",".join(waited) if after else ""
        for (target, _), job in zip(jobs, submitted[level.name]):
            out.write(f"  {level.name:<15} job {job.job_id:<9} {dependency:<16} {target}\n")
    return submitted


def get_args_parser():
    parser = argparse.ArgumentParser("python -m slurm.chain", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="toy", help="configs/PRESET and runs/PRESET: toy or paper")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (the jobs and their commands); "
                                                                "submit nothing")
    add_slurm_arguments(parser)
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    preset = args.preset
    os.chdir(ROOT)  # the Makefile's paths are relative to the repository root; so is every job's working folder
    if not os.path.isdir(f"configs/{preset}"):
        raise LaunchError(f"--preset {preset}: there is no configs/{preset}")
    cfg = slurm_config(args)
    if preset == "paper":  # every data path, before any job is submitted (also with --dry-run)
        problems = paper_data.data_problems(make_variable("DATA_ROOT", preset))
        if problems:
            raise LaunchError(f"{len(problems)} data problem(s), nothing submitted:\n  " + "\n  ".join(problems))
    planned = plan(table1_levels(preset), preset)
    for _, jobs in planned:  # every stage's config resolves: a bad preset fails before the first job is submitted
        for module, stage_argv in (parse_command(c) for _, commands in jobs for c in commands):
            if module in STAGES:
                output_dir(module, parse_args(module, stage_argv))
    if args.dry_run:
        for level, jobs in planned:
            print(f"{level.name} (after {', '.join(level.after) or 'nothing'}; {level.resources}): "
                  f"{len(jobs)} job(s)" + ("" if jobs else ": nothing to run"))
            for target, commands in jobs:
                print(f"    {target}:" + "".join(f"\n        {c}" for c in commands))
        return planned
    if cfg.cluster != "slurm":
        raise LaunchError("slurm.chain submits SLURM jobs (cluster=slurm); for a local run use "
                          "`make reproduce-table1` without CLUSTER")
    check_slurm(cfg)
    print(f"submitting `make reproduce-table1 PRESET={preset}` to SLURM:")
    submitted = submit_plan(planned, cfg, os.path.join("runs", preset, "slurm"))
    if not submitted:
        print("nothing to do: every step is done")
        return submitted
    jobs = [job for level_jobs in submitted.values() for job in level_jobs]
    print(f"progress: {progress_command(jobs)}")
    print(f"logs:     runs/{preset}/slurm/LEVEL/; the tables are printed in the last job's log and written to "
          f"results/{preset}/")
    return submitted


if __name__ == "__main__":
    try:
        main()
    except (LaunchError, ConfigError, FileNotFoundError) as e:
        print(f"slurm.chain: error: {e}", file=sys.stderr)
        sys.exit(2)
