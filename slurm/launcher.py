"""Run one stage on SLURM, or on this machine, through submitit (the DINO `run_with_submitit.py` pattern).

    python -m slurm.launcher refine --config configs/paper/refine.yaml objective=clip_refine \
        run_dir=runs/paper/refine/clip_refine --partition gpu --gpus_per_node 4 --timeout_min 600
    python -m slurm.launcher evaluate --config configs/toy/eval.yaml pretrained=runs/toy/pretrain/model.pt \
        out_dir=results/toy/pretrained --cluster local
    python -m slurm.launcher refine --help        # the stage's own options, then the SLURM ones

Stages: refine, proclip_stage1, proclip_stage2, evaluate. Every argument that is not a SLURM option goes to the stage
unchanged; the stage's own parser and config check it before anything is submitted. SLURM options: defaults in
slurm/cluster.yaml (--slurm_config FILE for another), each one overridable (--partition gpu). Logs go to
RUN_DIR/slurm/ (OUT_DIR/slurm/ for evaluate). The command prints the job id and how to follow the job, and returns
(--wait: follows the job's log until it ends; always so with --cluster local).

Inside the job (StageJob below):
- DDP: one process per GPU (tasks_per_node). submitit's TorchDistributedEnvironment exports RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR and MASTER_PORT; common/distributed.py joins the process group from them (NCCL on GPUs,
  gloo on CPU). `batch_size` is the global batch; rank 0 alone writes logs and checkpoints.
- Time limit and preemption (training stages): SLURM sends USR2 signal_delay_s before the time limit. The step in
  progress finishes, checkpoint.pt is saved, and the job requeues itself (at most max_requeues times) and resumes
  exactly where it stopped. SIGTERM (preemption, scancel, scontrol requeue) also saves at the next step boundary and
  exits; when SLURM requeues the job (preemption, scontrol requeue) it resumes from there.
"""
import argparse
import importlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import submitit
from submitit.core.utils import FailedJobError

from common.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "slurm", "cluster.yaml")
STAGES = {"refine": "refine", "proclip_stage1": "proclip_stage1", "proclip_stage2": "proclip_stage2",
          "evaluate": "evaluate"}  # name -> module with DEFAULTS, get_args_parser(add_help) and main(argv)
TRAINING_STAGES = ("refine", "proclip_stage1", "proclip_stage2")  # common/train.py loops: checkpointable
RUNNABLE = (*STAGES.values(), "common.toyworld", "common.proclip")  # modules with main(argv) a job may run

# The keys of slurm/cluster.yaml, with the values used when a file leaves one out.
SLURM_DEFAULTS = dict(
    cluster="slurm",          # slurm | local (this machine, through submitit's LocalExecutor)
    partition="",             # "" = the cluster's default partition
    account="",
    qos="",
    nodes=1,
    gpus_per_node=1,          # one process (DDP rank) per GPU
    tasks_per_node=0,         # processes per node; 0 = one per GPU (1 without GPUs)
    cpus_per_task=8,
    mem_gb=0,                 # 0 = the partition's default
    timeout_min=240,          # the job's time limit; set explicitly in local mode too (submitit's default is 2 min)
    constraint="",
    sbatch_extra={},          # more #SBATCH lines: {reservation: mine} -> #SBATCH --reservation=mine
    setup=[],                 # shell lines run before the job, e.g. ["module load cuda/12.4"]
    signal_delay_s=120,       # SLURM sends USR2 this many seconds before the time limit
    max_requeues=3,           # how often one job may requeue itself (time limit or preemption)
    array_parallelism=32,     # at most this many tasks of one job array run at once
)


class LaunchError(ValueError):
    """Bad input found before anything was submitted."""


# -----------------------------------------------------------------------------------------------------------------
# what runs inside the job
def _preemption_signal():
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)  # USR2 unless SUBMITIT_PREEMPT_SIGNAL says


class StageJob(submitit.helpers.Checkpointable):
    """Runs `module.main(argv)` for each (module, argv) of `commands`, in order, in every process of a job.
    submitit pickles it into the job folder, and again, with `requeues` counted, when the job requeues itself."""

    def __init__(self, commands, max_requeues=3):
        for module, _ in commands:
            if module not in RUNNABLE:
                raise LaunchError(f"cannot run module {module!r} as a job; runnable: {', '.join(RUNNABLE)}")
        self.commands = [(module, list(argv)) for module, argv in commands]
        self.max_requeues, self.requeues = max_requeues, 0

    def __call__(self):
        dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                                         overwrite=True)
        result = None
        for module, argv in self.commands:
            result = self._run(module, argv, dist_env)
        return result

    def _run(self, module_name, argv, dist_env):
        module = importlib.import_module(module_name)
        if module_name not in TRAINING_STAGES:  # submitit's own handling: a requeued job starts over
            return module.main(argv)
        from common import train

        # A signal only raises a flag: common/train.py saves checkpoint.pt at the next step boundary and raises
        # StoppedForRequeue (a save in the middle of a step could catch the optimiser half-way).
        submitit_handlers = {sig: signal.getsignal(sig) for sig in (_preemption_signal(), signal.SIGTERM)}
        caught = []

        def stop_at_next_step(signum, frame):
            caught.append(signum)
            train.request_stop()

        train.request_stop(False)
        for sig in submitit_handlers:
            signal.signal(sig, stop_at_next_step)
        if dist_env.rank == 0:
            print(f"slurm.launcher: {module_name} on {dist_env.world_size} process(es), requeued {self.requeues} "
                  f"time(s) by itself, {os.environ.get('SLURM_RESTART_COUNT', '0')} restart(s) in all; on "
                  f"{_preemption_signal().name} or SIGTERM it saves a checkpoint and stops", flush=True)
        try:
            return module.main(argv)
        except train.StoppedForRequeue as stopped:
            signum = caught[0] if caught else _preemption_signal()  # a rank may stop because another was signalled
            if signum == signal.SIGTERM:  # preempted or cancelled: SLURM requeues the job (or not) itself
                sys.exit(f"slurm.launcher: SIGTERM: {stopped}. A requeued job resumes from there; so does the "
                         f"same command submitted again")
            submitit_handlers[signum](signum, None)  # rank 0: checkpoint(), scontrol requeue, exit
            return None  # other ranks: the requeue ends this attempt
        finally:
            for sig, handler in submitit_handlers.items():
                signal.signal(sig, handler)

    def checkpoint(self, *args, **kwargs):
        """submitit calls it on rank 0 when the job is to requeue itself: the state is on disk (checkpoint.pt), so
        the job resubmits itself unchanged, but at most max_requeues times."""
        if self.requeues >= self.max_requeues:
            print(f"slurm.launcher: not requeued again: max_requeues={self.max_requeues} reached; resubmit the "
                  f"same command to resume from the checkpoint", flush=True)
            return None
        self.requeues += 1
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


# -----------------------------------------------------------------------------------------------------------------
# configuration and checks, all before submitting
def load_slurm_config(path=None, overrides=()):
    """SLURM_DEFAULTS <- YAML file (default slurm/cluster.yaml) <- key=value overrides, checked."""
    cfg = load_config(SLURM_DEFAULTS, path or DEFAULT_CONFIG, overrides)
    source = path or "slurm/cluster.yaml"
    if cfg.cluster not in ("slurm", "local"):
        raise ConfigError(f"{source}: cluster={cfg.cluster!r}; use slurm or local")
    for key in ("nodes", "cpus_per_task", "timeout_min"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{source}: {key}={getattr(cfg, key)} must be at least 1")
    for key in ("gpus_per_node", "tasks_per_node", "mem_gb", "signal_delay_s", "max_requeues"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{source}: {key}={getattr(cfg, key)} must not be negative")
    if cfg.signal_delay_s >= 60 * cfg.timeout_min:
        raise ConfigError(f"{source}: signal_delay_s={cfg.signal_delay_s} must be shorter than the time limit "
                          f"(timeout_min={cfg.timeout_min})")
    if cfg.cluster == "local" and cfg.nodes > 1:
        raise ConfigError(f"{source}: cluster=local runs on this machine only; set nodes=1")
    return cfg


def check_slurm(cfg):
    """sbatch is installed, the controller answers, and the partition exists."""
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch is not on the PATH, so nothing can be submitted to SLURM. On a cluster, run from a "
                          "login node (or `module load slurm`); on this machine, start a local one with "
                          "`sudo slurm/local_cluster.sh up`; or run here with --cluster local")
    try:
        sinfo = subprocess.run(["sinfo", "--noheader", "--format=%P|%G"], capture_output=True, text=True,
                               timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"sinfo failed ({e}): the SLURM client tools do not work here") from None
    if sinfo.returncode != 0:
        raise LaunchError(f"the SLURM controller does not answer (sinfo: {sinfo.stderr.strip()}). Check "
                          f"`scontrol ping`; for the local cluster: slurm/local_cluster.sh status")
    gres = {}  # partition -> its nodes' generic resources, e.g. "gpu:a100:8"; the default partition carries a *
    for line in sinfo.stdout.splitlines():
        partition, _, resources = line.partition("|")
        gres.setdefault(partition, []).append(resources)
    listed, names = list(gres), [p.rstrip("*") for p in gres]
    if cfg.partition and cfg.partition not in names:
        raise LaunchError(f"partition={cfg.partition!r} does not exist on this cluster; its partitions: "
                          f"{', '.join(listed)} (* = default). Set partition in the SLURM config or --partition")
    if not cfg.partition and not any(p.endswith("*") for p in listed):
        raise LaunchError(f"partition is not set and this cluster has no default partition; choose one of "
                          f"{', '.join(names)} (--partition NAME)")
    chosen = next(p for p in listed if p.rstrip("*") == cfg.partition or not cfg.partition and p.endswith("*"))
    if cfg.gpus_per_node and not any("gpu" in resources for resources in gres[chosen]):
        raise LaunchError(f"gpus_per_node={cfg.gpus_per_node} but partition {chosen.rstrip('*')} has no GPUs "
                          f"(sinfo Gres: {', '.join(gres[chosen])}); choose a GPU partition, or run on CPUs with "
                          f"--gpus_per_node 0 (e.g. --slurm_config slurm/local.yaml)")


def split_argv(argv):
    """-> (SLURM overrides as key=value, --slurm_config path, --wait, the stage's arguments in their order)."""
    overrides, config, wait, stage_argv = [], None, False, []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, equals, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        key = name.replace("-", "_")
        if key == "wait" and not equals:
            wait = True
        elif key in SLURM_DEFAULTS or key == "slurm_config":
            if not equals:
                if i + 1 >= len(argv):
                    raise LaunchError(f"--{name} needs a value")
                i += 1
                value = argv[i]
            if key == "slurm_config":
                config = value
            else:
                overrides.append(f"{key}={value}")
        else:
            stage_argv.append(token)
        i += 1
    return overrides, config, wait, stage_argv


def check_stage_args(stage, stage_argv):
    """Resolve the stage's config as the job will, so that bad input fails now. -> the stage's output folder."""
    module = importlib.import_module(STAGES[stage])
    if stage == "evaluate" and stage_argv[:1] in (["table"], ["figure"]):
        return stage_argv[-1]  # evaluate.py table NAME RESULTS_DIR: writes into RESULTS_DIR
    for token in stage_argv:
        key = token[2:].split("=")[0].replace("-", "_") if token.startswith("--") else None
        if key and key != "config" and key not in module.DEFAULTS:
            raise LaunchError(f"unknown option --{key}: neither a SLURM option (--{', --'.join(SLURM_DEFAULTS)}, "
                              f"--slurm_config, --wait) nor a config key of {stage}.py (see DEFAULTS there)")
    args, unknown = build_parser(stage).parse_known_args(stage_argv)  # stage_argv holds no SLURM option
    cfg = load_config(module.DEFAULTS, args.config, args.overrides + unknown)
    folder_key = "out_dir" if stage == "evaluate" else "run_dir"
    if not getattr(cfg, folder_key):
        raise LaunchError(f"{folder_key} is not set: pass {folder_key}=PATH (the job's logs go to PATH/slurm)")
    return getattr(cfg, folder_key)


# -----------------------------------------------------------------------------------------------------------------
# submitting
def make_executor(cfg, log_dir, name, resources="training"):
    """A submitit executor for cfg.cluster. resources: training (nodes x tasks_per_node processes, the GPUs),
    single (1 process, at most 1 GPU: evaluation), cpu (1 process, no GPU: data, tables)."""
    gpus, tasks, nodes = cfg.gpus_per_node, cfg.tasks_per_node or max(1, cfg.gpus_per_node), cfg.nodes
    if resources != "training":
        gpus, tasks, nodes = (0 if resources == "cpu" else min(gpus, 1)), 1, 1
    executor = submitit.AutoExecutor(folder=log_dir, cluster=cfg.cluster, slurm_max_num_timeout=cfg.max_requeues,
                                     local_max_num_timeout=cfg.max_requeues)
    params = dict(name=name, timeout_min=cfg.timeout_min, nodes=nodes, tasks_per_node=tasks,
                  cpus_per_task=cfg.cpus_per_task)
    if gpus:
        params["gpus_per_node"] = gpus
    if cfg.mem_gb:
        params["mem_gb"] = cfg.mem_gb
    # the job imports slurm.launcher and the stages from this checkout, whatever its working directory
    setup = [f"export PYTHONPATH={shlex.quote(ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}", *cfg.setup]
    if cfg.cluster == "slurm":
        params.update(slurm_signal_delay_s=cfg.signal_delay_s, slurm_array_parallelism=cfg.array_parallelism,
                      slurm_setup=setup, slurm_additional_parameters={"requeue": True, **cfg.sbatch_extra})
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(cfg, key):
                params[f"slurm_{key}"] = getattr(cfg, key)
    else:
        params["local_setup"] = setup
    executor.update_parameters(**params)
    return executor


def submit(executor, stage_jobs, after=()):
    """Submit StageJobs (several: one job array) to run after the jobs `after` succeed. -> submitit jobs."""
    if after:
        executor.update_parameters(slurm_dependency="afterok:" + ":".join(_array_id(job) for job in after))
    try:
        with submitit.helpers.clean_env():  # a launcher run inside a job must not pass that job's SLURM_* on
            if len(stage_jobs) == 1:
                return [executor.submit(stage_jobs[0])]
            with executor.batch():
                return [executor.submit(stage_job) for stage_job in stage_jobs]
    except FailedJobError as e:  # sbatch said no: say what it said, without submitit's trace
        raise LaunchError(f"sbatch refused the job: {str(e).strip()}") from None


def _array_id(job):
    return str(job.job_id).split("_")[0]  # afterok on an array's id waits for all its tasks


def job_ended(job):
    """The job wrote its result, or (SLURM) left the queue. Unlike submitit's job.done(), no sacct needed."""
    if job.paths.result_pickle.exists():
        return True
    if isinstance(job, submitit.SlurmJob):
        squeue = subprocess.run(["squeue", "--noheader", "--jobs", str(job.job_id), "--format=%T"],
                                capture_output=True, text=True)
        return squeue.returncode == 0 and not squeue.stdout.strip()  # requeued jobs stay listed, PENDING
    return job.done()


def follow(job, poll_s=2.0, out=sys.stdout):
    """Print the job's log (rank 0) as it grows, until the job ends; -> its result (raises the job's error)."""
    log, printed = job.paths.stdout, 0
    while True:
        ended = job_ended(job)
        if log.exists():
            text = log.read_text(errors="replace")
            out.write(text[printed:])
            out.flush()
            printed = len(text)
        if ended:
            return job.results()[0]  # rank 0's
        time.sleep(poll_s)


def progress_command(jobs):
    ids = ",".join(sorted({_array_id(job) for job in jobs}, key=int))
    return f"squeue --jobs {ids} --format '%.12i %.24j %.9T %.10M %R'"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return None
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        raise LaunchError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if "-h" in rest or "--help" in rest:
        return build_parser(stage).print_help()
    overrides, config_path, wait, stage_argv = split_argv(rest)
    cfg = load_slurm_config(config_path, overrides)
    out_dir = check_stage_args(stage, stage_argv)
    if cfg.cluster == "slurm":
        check_slurm(cfg)
    log_dir = os.path.join(out_dir, "slurm")
    resources = "training" if stage in TRAINING_STAGES else "single"
    executor = make_executor(cfg, log_dir, f"{stage}-{os.path.basename(os.path.normpath(out_dir))}", resources)
    (job,) = submit(executor, [StageJob([(STAGES[stage], stage_argv)], cfg.max_requeues)])
    print(f"submitted {stage} as {cfg.cluster} job {job.job_id}; log: {job.paths.stdout}")
    if cfg.cluster == "local" or wait:
        return follow(job)
    print(f"progress: {progress_command([job])}\n     log: tail -f {job.paths.stdout}")
    return job


def build_parser(stage):
    """The stage's own parser (its get_args_parser, as a parent) with the SLURM options added: --help shows both."""
    module = importlib.import_module(STAGES[stage])
    parser = argparse.ArgumentParser(f"python -m slurm.launcher {stage}", parents=[module.get_args_parser(False)],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=f"Runs {stage}.py as a job: its arguments, then the SLURM ones.")
    group = parser.add_argument_group("SLURM (defaults: slurm/cluster.yaml)")
    group.add_argument("--slurm_config", metavar="FILE", help="another YAML file of SLURM settings")
    group.add_argument("--wait", action="store_true", help="follow the job's log until it ends")
    for key, default in vars(load_slurm_config()).items():
        group.add_argument(f"--{key}", metavar="VALUE", help=f"(default {default!r})")
    return parser


if __name__ == "__main__":
    from slurm import launcher  # the importable module (not __main__), so that submitit pickles slurm.launcher.*

    try:
        launcher.main()
    except (launcher.LaunchError, ConfigError, FileNotFoundError) as e:  # bad input, found before submitting
        sys.exit(f"slurm.launcher: error: {e}")
