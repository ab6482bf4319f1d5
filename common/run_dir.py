"""The run directory's safety, apart from the training loop (common/train.py), which uses it as:

    with RunDir(run_dir, env) as run:    # one process owns run_dir (a lock); Ctrl-C / SIGTERM only raise a flag
        checkpoint = Checkpoint(path, objective, optimizer, fingerprint(cfg, ...), env)
        step, skipped = checkpoint.resume(generator, cfg.resume, say)       # (0, 0) without a checkpoint
        ...
        checkpoint.save(step, skipped, rng_states(generator))
        if run.stop_requested(): ...     # at a step boundary, agreed by every rank

- The lock: run_dir/.lock, held with fcntl while the run lasts (the kernel releases it when the process ends, even
  by kill -9), holding the owner's pid and host. Then the temp files of writers that were killed are removed.
- Exact resume: checkpoint.pt holds the objective, the optimiser, every RNG state, the step and a `fingerprint` of
  everything that shapes the result; a resume with another fingerprint is refused (resume=force overrides).
- Stopping on request: a signal can arrive mid-step, when the optimiser may have updated only part of the weights,
  so a handler only calls request_stop(); the loop saves at the next step boundary and raises StoppedForRequeue.
  A job runner with its own signals (slurm/job.py) calls request_stop() itself.
- DataLoader workers end with the trainer, even when it is killed with SIGKILL, and not before it: a SIGTERM sent
  to every process of a SLURM job (scancel, preemption) is the trainer's to handle (`die_with_parent`, Linux).
"""
import contextlib
import ctypes
import fcntl
import hashlib
import os
import signal
import socket
import threading
import time

import torch
import torch.distributed as dist

from common.checkpoints import atomic_torch_save, load_checkpoint_file, remove_stale_temp_files
from common.config import ConfigError, UserError
from common.distributed import barrier

# Keys that do not change the result, left out of the resume fingerprint.
NOT_FINGERPRINTED = {"run_dir", "num_workers", "device", "log_every", "checkpoint_every", "resume", "image_cache",
                     "image_cache_max_gb", "report_to", "data_index", "holdout_every", "seeds"}


class RunDirBusyError(UserError, RuntimeError):
    pass


class StoppedForRequeue(UserError, RuntimeError):
    """Raised after checkpoint.pt was saved because request_stop() was called; running the same command resumes."""


# --- the run directory: one owner, signals raise a flag ----------------------------------------------------------
_stop_requested = False


def request_stop(requested=True):
    """Ask the run in this process to save and stop at the next step boundary (what a signal handler calls);
    request_stop(False) withdraws the request (the loop does, once it has served it)."""
    global _stop_requested
    _stop_requested = requested


class RunDir:
    """`with RunDir(path, env) as run:` owns `path` for the run (rank 0 takes the lock) and, on every rank, turns
    Ctrl-C and SIGTERM into request_stop() (a second one acts at once). Signals that someone else already handles
    (the SLURM job) are left alone. Both are undone on exit."""

    def __init__(self, path, env, signals=(signal.SIGINT, signal.SIGTERM)):
        self.path, self.env, self.signals = path, env, signals
        self._lock, self._previous = None, {}

    def __enter__(self):
        if self.env.is_main:
            self._lock = _take_lock(self.path)
        if threading.current_thread() is threading.main_thread():
            defaults = (signal.SIG_DFL, signal.default_int_handler)
            for s in self.signals:
                if signal.getsignal(s) in defaults:
                    self._previous[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if self._lock is not None:
            self._lock.close()  # releases the lock
        return False

    def _on_signal(self, signum, frame):
        request_stop()
        signal.signal(signum, self._previous[signum])  # the next one acts at once
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping",
              flush=True)

    def stop_requested(self):
        """True on every rank as soon as one rank was asked to stop (request_stop), so that all ranks stop after
        the same step. With several ranks this costs one all-reduce of one number per step."""
        if self.env.world_size == 1:
            return _stop_requested
        flag = torch.tensor([float(_stop_requested)], device=self.env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _take_lock(run_dir):
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, ".lock")
    lock = open(path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise RunDirBusyError(f"{run_dir} is in use by {holder} (lock {path}); wait for that run to end or stop it, "
                              f"or use another run_dir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    lock.flush()
    for name in remove_stale_temp_files(run_dir):
        print(f"removed {os.path.join(run_dir, name)}, left by a run that was killed while writing")
    return lock


def die_with_parent(worker_id):
    """DataLoader(worker_init_fn=die_with_parent): workers end with the trainer, even when it is killed with
    SIGKILL (Linux), and ignore SIGTERM: SLURM sends it to every process of a job, and a worker that died of it
    would make the trainer fail (torch: "DataLoader worker ... is killed by signal") instead of saving a checkpoint
    at the next step and stopping."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# --- exact resume ------------------------------------------------------------------------------------------------
def fingerprint(cfg, **derived):
    """Everything that shapes the result: the config (less NOT_FINGERPRINTED), the content of every file it names
    (training data, starting weights, stage-1 adapter, prior), and derived sizes. Image folders are not hashed."""
    record = {k: v for k, v in sorted(vars(cfg).items()) if k not in NOT_FINGERPRINTED}
    for key, value in list(record.items()):
        if isinstance(value, str) and value and os.path.isfile(value):
            record[f"{key} (sha256)"] = _file_digest(value)
    return {**record, **derived}


def _file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_resume(stored, current, ckpt_path, resume, say):
    """Refuse to resume a checkpoint whose fingerprint `stored` differs from `current`, naming the keys;
    resume="force" resumes anyway, with a warning."""
    differ = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
    if not differ:
        return
    details = "; ".join(f"{k}: {stored.get(k, '(absent)')!r} -> {current.get(k, '(absent)')!r}" for k in differ[:6])
    if resume != "force":
        raise ConfigError(f"{ckpt_path} was written by a run with another configuration or data ({details}). Use "
                          f"a new run_dir, delete the checkpoint, or pass resume=force to resume it anyway")
    say(f"WARNING: resume=force: resuming {ckpt_path} although {details}")


def rng_states(generator):
    """Every RNG state a step draws from: torch's global CPU (and CUDA) state and the objective's generator."""
    states = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states, generator):
    torch.set_rng_state(states["torch"])
    generator.set_state(states["generator"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class Checkpoint:
    """run_dir/checkpoint.pt of one run: the objective, the optimiser, the RNG states, the step, the number of
    skipped images and the run's fingerprint. Rank 0 writes it (CRC-checked, atomically); every rank resumes it."""

    def __init__(self, path, objective, optimizer, fingerprint, env):
        self.path, self.objective, self.optimizer, self.fingerprint, self.env = (path, objective, optimizer,
                                                                                 fingerprint, env)
        self.saved_step = None  # the step of the last checkpoint written or resumed in this run

    def resume(self, generator, resume, say):
        """Load checkpoint.pt if there is one (after check_resume) -> (step, skipped images); (0, 0) if none."""
        if not os.path.exists(self.path):
            return 0, 0
        ckpt = load_checkpoint_file(self.path)
        check_resume(ckpt.get("fingerprint", {}), self.fingerprint, self.path, resume, say)
        try:
            self.objective.load_state_dict(ckpt["objective"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"{self.path} does not fit this run's model ({str(e).splitlines()[0]}); use a new "
                             f"run_dir or delete the checkpoint") from None
        set_rng_states(ckpt["rng"], generator)
        self.saved_step = ckpt["step"]
        return ckpt["step"], ckpt["skipped_images"]

    def save(self, step, skipped, rng):
        """The state after `step` steps, with `rng` the RNG states as of then. Every rank calls it."""
        if self.env.is_main:
            atomic_torch_save({"objective": self.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
                               "rng": rng, "step": step, "skipped_images": skipped,
                               "fingerprint": self.fingerprint}, self.path)
        self.saved_step = step
        barrier(self.env)

    def remove(self):
        """Once model.pt holds the result, the resumable state is no longer needed."""
        os.remove(self.path)

    def last_good(self):
        """What a user can resume from after a non-finite loss, in words."""
        if self.saved_step is None:
            return ("No checkpoint was written (no weights of this run were verified good yet); start again with a lower "
                    "lr, or precision=fp32")
        return (f"The last good checkpoint is {self.path} (step {self.saved_step}): a lower lr (or precision=fp32) "
                f"with resume=force resumes from it")
