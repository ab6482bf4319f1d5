"""What runs inside a job that slurm/launcher.py or slurm/chain.py submitted: StageJob.

- DDP: one process per GPU (tasks_per_node). submitit's TorchDistributedEnvironment exports RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR and MASTER_PORT; common/distributed.py joins the process group from them (NCCL on GPUs,
  gloo on CPU). `batch_size` is the global batch; rank 0 alone writes logs and checkpoints.
- Time limit and preemption (training stages): SLURM sends USR2 signal_delay_s before the time limit. The step in
  progress finishes, checkpoint.pt is saved, and the job requeues itself (at most max_requeues times) and resumes
  exactly where it stopped. SIGTERM (preemption, scancel, scontrol requeue) also saves at the next step boundary and
  exits; when SLURM requeues the job (preemption, scontrol requeue) it resumes from there.
- Other modules (the world, the embedding cache, the tables) have nothing to save: they run with SIGTERM's default
  action, and so do the processes they fork. (With submitit's handler, which only logs it, the workers of
  tools/toyworld.py's `with multiprocessing.Pool()` would outlive its terminate() and the job would never end.)
"""
import importlib
import os
import signal
import sys

import submitit

from slurm.cluster import LaunchError

# Every program a job may run, each a module with main(argv): the stages (the top-level files, each with DEFAULTS
# and get_args_parser; slurm/launcher.py submits them) with the resources of their job (make_executor in
# slurm/cluster.py), and the tools (tools/), which slurm/chain.py runs as the Makefile does.
STAGES = {"refine": "training", "proclip_stage1": "training", "proclip_stage2": "training", "evaluate": "single"}
TOOLS = ("tools.toyworld", "tools.toylanguages", "tools.paper_data", "tools.fill_cache", "tools.tables",
         "tools.curves", "tools.weights")
TRAINING_STAGES = tuple(stage for stage, resources in STAGES.items() if resources == "training")  # checkpointable
RUNNABLE = (*STAGES, *TOOLS)


def _preemption_signal():
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)  # USR2 unless SUBMITIT_PREEMPT_SIGNAL says


def with_default_sigterm(main, argv):
    """main(argv) with SIGTERM's default action (the process ends), inherited by the processes it forks."""
    handler = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        return main(argv)
    finally:
        signal.signal(signal.SIGTERM, handler)


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
        if module_name not in TRAINING_STAGES:  # a requeued job starts over
            return with_default_sigterm(module.main, argv)
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
