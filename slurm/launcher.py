r"""Run one stage on SLURM, or on this machine, through submitit (the DINO `run_with_submitit.py` pattern).

    python -m slurm.launcher refine --config configs/paper/refine.yaml objective=clip_refine \
        run_dir=runs/paper/refine/clip_refine --partition gpu --gpus-per-node 4 --timeout-min 600
    python -m slurm.launcher evaluate --config configs/toy/eval.yaml pretrained=runs/toy/pretrain/model.pt \
        out_dir=results/toy/pretrained --cluster local
    python -m slurm.launcher refine --help        # the stage's own options, then the SLURM ones

Stages: refine, proclip_stage1, proclip_stage2, evaluate (STAGES in slurm/job.py). The stage's own arguments
(--config FILE and key=value overrides) go to it unchanged; the stage's config checks them before anything is
submitted. SLURM options: defaults in slurm/cluster.yaml (--slurm-config FILE for another), each one overridable
(--partition gpu). Logs go to
RUN_DIR/slurm/ (OUT_DIR/slurm/ for evaluate). The command prints the job id and how to follow the job, and returns
(--wait: follows the job's log until it ends; always so with --cluster local).

Inside the job, slurm/job.py runs the stage (DDP, and saving and requeueing at the time limit or on preemption);
slurm/cluster.py holds the SLURM settings, the checks against the cluster, submitting and following jobs.
"""
import importlib
import os
import sys

from common.config import ConfigError, KeysHelpParser, configs_of_seeds, load_config
from slurm.cluster import (SLURM_DEFAULTS, LaunchError, add_slurm_arguments, check_slurm, follow, make_executor,
                           option, progress_command, slurm_config, submit)
from slurm.job import STAGES, StageJob


def build_parser(stage):
    """The stage's own parser (its get_args_parser, as a parent) with the SLURM options added: --help shows both."""
    module = importlib.import_module(stage)
    parser = KeysHelpParser(f"python -m slurm.launcher {stage}", parents=[module.get_args_parser(False)],
                            allow_abbrev=False, defaults=module.DEFAULTS, path=module.__file__,  # and its keys
                            description=f"Runs {stage}.py as a job: its arguments, then the SLURM ones.")
    group = add_slurm_arguments(parser)
    group.add_argument("--wait", action="store_true", help="follow the job's log until it ends")
    return parser


def parse_args(stage, argv):
    """Parse a stage's command line with build_parser(stage). -> args: the SLURM options (see slurm_config), --wait,
    and the stage's own arguments: args.stage_argv (what the job runs the stage with), args.stage_overrides (its
    key=value overrides, in order). Any other --option is refused, in one line."""
    module = importlib.import_module(stage)
    args, unknown = build_parser(stage).parse_known_intermixed_args(argv)  # key=value anywhere, in order
    for token in unknown:
        name = token.split("=", 1)[0]
        key = name.lstrip("-").replace("-", "_")
        if token.startswith("-") and key in module.DEFAULTS:
            raise LaunchError(f"{name}: config keys of {stage}.py are given as key=value ({key}=VALUE)")
        slurm_options = ", ".join(["--slurm-config", *map(option, SLURM_DEFAULTS), "--wait"])
        raise LaunchError(f"unknown option {name}: not a SLURM option ({slurm_options}) and config keys of {stage}.py "
                          f"are given as key=value")
    args.stage_overrides = list(args.overrides)  # what the stage's main applies, in this order
    args.stage_argv = ([] if args.config is None else ["--config", args.config]) + args.stage_overrides
    return args


def output_dir(stage, args):
    """Resolve the stage's config as the job will, so that bad input fails now. -> the stage's output folder."""
    cfg = load_config(importlib.import_module(stage).DEFAULTS, args.config, args.stage_overrides)
    folder_key = "out_dir" if stage == "evaluate" else "run_dir"
    if not getattr(cfg, folder_key):
        raise LaunchError(f"{folder_key} is not set: pass {folder_key}=PATH (the job's logs go to PATH/slurm)")
    if hasattr(cfg, "seeds"):  # a stage that takes seeds=[...] (a row's runs or evaluations): the first seed's folder
        cfg = configs_of_seeds(cfg, folder_key, (folder_key,))[0]
    return getattr(cfg, folder_key)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return None
    stage = argv[0]
    if stage not in STAGES:
        raise LaunchError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    args = parse_args(stage, argv[1:])
    cfg = slurm_config(args)
    out_dir = output_dir(stage, args)
    if cfg.cluster == "slurm":
        check_slurm(cfg)
    log_dir = os.path.join(out_dir, "slurm")
    executor = make_executor(cfg, log_dir, f"{stage}-{os.path.basename(os.path.normpath(out_dir))}", STAGES[stage])
    (job,) = submit(executor, [StageJob([(stage, args.stage_argv)], cfg.max_requeues)])
    print(f"submitted {stage} as {cfg.cluster} job {job.job_id}; log: {job.paths.stdout}")
    if cfg.cluster == "local" or args.wait:
        return follow(job)
    print(f"progress: {progress_command([job])}\n     log: tail -f {job.paths.stdout}")
    return job


if __name__ == "__main__":
    try:
        main()
    except (LaunchError, ConfigError, FileNotFoundError) as e:  # bad input, found before submitting
        print(f"slurm.launcher: error: {e}", file=sys.stderr)
        sys.exit(2)
