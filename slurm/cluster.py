"""The SLURM side of slurm/launcher.py and slurm/chain.py: settings, checks, submitting and following jobs.

    parser = argparse.ArgumentParser()
    add_slurm_arguments(parser)                        # --slurm-config FILE, --partition NAME, ...
    cfg = slurm_config(parser.parse_args(["--slurm-config", "slurm/local.yaml"]))
    check_slurm(cfg)                                   # sbatch, the controller, the partition: before submitting
    (job,) = submit(make_executor(cfg, "runs/x/slurm", "x"), [StageJob([("refine", argv)], cfg.max_requeues)])
    follow(job)                                        # its log, until it ends (StageJob: slurm/job.py)

Settings: SLURM_DEFAULTS <- a YAML file (slurm/cluster.yaml unless --slurm-config FILE) <- --KEY VALUE options, one
per key, in kebab-case (gpus_per_node: --gpus-per-node).
"""
import os
import shlex
import shutil
import subprocess
import sys
import time

import submitit
from submitit.core.utils import FailedJobError

from common.config import ConfigError, key_comments, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "slurm", "cluster.yaml")

# The keys of slurm/cluster.yaml, with the values used when a file leaves one out.
SLURM_DEFAULTS = dict(
    cluster="slurm",          # slurm | local (this machine, through submitit's LocalExecutor)
    partition="",             # "" = the cluster's default partition
    account="",               # the account the job is charged to; "" = your default one
    qos="",                   # quality of service; "" = the partition's default
    nodes=1,                  # machines per training job (its ranks span them all)
    gpus_per_node=1,          # one process (DDP rank) per GPU
    tasks_per_node=0,         # processes (DDP ranks) per node; 0 = one per GPU of gpus_per_node, or 1 without GPUs
    cpus_per_task=8,          # CPU cores per process (its DataLoader workers run on them)
    mem_gb=0,                 # memory per node in GB; 0 = no --mem line: the partition's default memory
    timeout_min=240,          # the job's time limit; set explicitly in local mode too (submitit's default is 2 min)
    constraint="",            # node features the job needs (#SBATCH --constraint), e.g. a100; "" = any node
    sbatch_extra={},          # more #SBATCH lines: {reservation: mine} -> #SBATCH --reservation=mine
    setup=[],                 # shell lines run before the job, e.g. ["module load cuda/12.4"]
    signal_delay_s=120,       # SLURM sends USR2 this many seconds before the time limit
    max_requeues=3,           # how often one job may requeue itself (time limit or preemption)
    array_parallelism=32,     # at most this many tasks of one job array run at once
)


class LaunchError(ValueError):
    """Bad input found before anything was submitted."""


# -----------------------------------------------------------------------------------------------------------------
# settings
def add_slurm_arguments(parser):
    """--slurm-config FILE and one --KEY VALUE per key of SLURM_DEFAULTS (--gpus-per-node for gpus_per_node), in a
    group of their own, each with the comment of its SLURM_DEFAULTS line. -> the group."""
    group = parser.add_argument_group("SLURM (defaults: slurm/cluster.yaml)")
    group.add_argument("--slurm-config", metavar="FILE", help="another YAML file of SLURM settings")
    comments = key_comments(__file__, "SLURM_DEFAULTS")
    for key, default in vars(load_slurm_config()).items():
        about = f"{comments[key]} " if key in comments else ""
        group.add_argument(option(key), dest=key, metavar="VALUE",  # None: not given
                           help=f"{about}(default {default!r})".replace("%", "%%"))
    return group


def option(key):
    """The command-line option of a SLURM setting: gpus_per_node -> --gpus-per-node."""
    return "--" + key.replace("_", "-")


def slurm_config(args):
    """The SLURM settings of a parsed command line (see add_slurm_arguments)."""
    given = [f"{key}={getattr(args, key)}" for key in SLURM_DEFAULTS if getattr(args, key) is not None]
    return load_slurm_config(args.slurm_config, given)


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
    """sbatch is installed, the controller answers, and the partition exists (and has GPUs if cfg asks for some)."""
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
                          f"--gpus-per-node 0 (e.g. --slurm-config slurm/local.yaml)")


# -----------------------------------------------------------------------------------------------------------------
# submitting
def make_executor(cfg, log_dir, name, resources="training", sbatch_extra=None):
    """A submitit executor for cfg.cluster. resources: training (nodes x tasks_per_node processes, the GPUs),
    single (1 process, at most 1 GPU: evaluation), cpu (1 process, no GPU: data, tables). sbatch_extra: more
    #SBATCH options than cfg's (SLURM only)."""
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
    # the job imports slurm.job and the stages from this checkout, whatever its working directory
    setup = [f"export PYTHONPATH={shlex.quote(ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}", *cfg.setup]
    if cfg.cluster == "slurm":
        params.update(slurm_signal_delay_s=cfg.signal_delay_s, slurm_array_parallelism=cfg.array_parallelism,
                      slurm_setup=setup,
                      slurm_additional_parameters={"requeue": True, **cfg.sbatch_extra, **(sbatch_extra or {})})
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
        executor.update_parameters(slurm_dependency="afterok:" + ":".join(array_id(job) for job in after))
    try:
        with submitit.helpers.clean_env():  # a launcher run inside a job must not pass that job's SLURM_* on
            if len(stage_jobs) == 1:
                return [executor.submit(stage_jobs[0])]
            with executor.batch():
                return [executor.submit(stage_job) for stage_job in stage_jobs]
    except FailedJobError as e:  # sbatch said no: say what it said, without submitit's trace
        raise LaunchError(f"sbatch refused the job: {str(e).strip()}") from None


def array_id(job):
    return str(job.job_id).split("_")[0]  # afterok on an array's id waits for all its tasks


# -----------------------------------------------------------------------------------------------------------------
# following
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
    ids = ",".join(sorted({array_id(job) for job in jobs}, key=int))
    return f"squeue --jobs {ids} --format '%.12i %.24j %.9T %.10M %R'"
