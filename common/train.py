"""The training loop every stage shares. Read `train_step` first: it is the whole update, in one screen.

A stage builds an `Objective` (the contract is in its docstring) and calls

    train(cfg, objective, dataset, run_dir, export)

Everything else here is bookkeeping around train_step, and each piece is a small function below it:
- the run directory is owned by one process (`own_run_dir`: a lock holding the pid and host);
- exact resume: `run_dir/checkpoint.pt` holds the objective, the optimiser, every RNG state, the step, and a
  fingerprint of the config, data and starting weights; a resume with another fingerprint is refused
  (`resume=force` overrides). The data order is a seeded permutation per epoch, so a resumed run sees exactly
  the batches it had not seen yet;
- a checkpoint is written only once its weights have produced a finite loss and gradient (the next step's),
  again just before the export, and at the next step boundary after SIGINT / SIGTERM or a SLURM signal;
- one JSON line of metrics per log step in run_dir/log.jsonl;
- done: `export(objective, run_dir/model.pt)` writes the result; a run whose model.pt exists is skipped.
"""
import contextlib
import ctypes
import fcntl
import hashlib
import json
import math
import os
import signal
import socket
import threading
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from common.checkpoints import atomic_torch_save, load_checkpoint_file, remove_stale_temp_files
from common.config import ConfigError, UserError, save_resolved_config
from common.data import collate_pairs
from common.distributed import average_gradients, barrier, init_distributed, mean_over_ranks, wrap_ddp

# Keys every training stage accepts, merged into the stage's own DEFAULTS.
TRAIN_DEFAULTS = dict(
    epochs=1,                 # passes over the training set
    max_steps=0,              # >0: stop after this many steps (smoke tests); the LR schedule spans them
    batch_size=512,           # GLOBAL batch, split evenly over ranks
    accum_steps=1,            # >1: each rank's batch in this many micro-batches, same update (accumulated_backward)
    lr=1e-6,
    schedule="constant",      # constant | cosine (after warmup_steps of linear warm-up)
    warmup_steps=0,
    weight_decay=0.1,         # applied to all parameters (docs/methods.md §1)
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    grad_clip=0.0,            # 0 = off (the papers use none)
    precision="fp32",         # fp32 | bf16 (autocast, GPU only)
    seed=0,
    num_workers=2,
    device="auto",            # auto | cpu | cuda
    log_every=10,
    checkpoint_every=100,     # steps between resumable checkpoints
    resume="auto",            # auto: resume checkpoint.pt if its fingerprint matches | force: resume it anyway
    image_cache="cache/images",  # decode each image once into this folder (common/imagecache.py); "" = per item
    crash_at_step=-1,         # tests only: raise SimulatedCrash before this step, like a kill (nothing saved)
)
# Keys that do not change the result, left out of the resume fingerprint.
NOT_FINGERPRINTED = {"run_dir", "num_workers", "device", "log_every", "checkpoint_every", "resume", "crash_at_step",
                     "image_cache"}


class Objective(nn.Module):
    """What a stage hands to train(): a module that holds everything that must survive a restart.

    - forward(batch, generator) -> (loss, {name: scalar tensor to log}). `batch` is this rank's share of the
      global batch; draw all randomness from `generator` (its state is checkpointed, so resume is exact).
    - after_optimizer_step(): called after every update (an EMA teacher, the temperature clamp). Default: nothing.
    - self.freeze(module): a frozen part (a teacher): no gradients, and it stays in eval mode in train().
    """

    def freeze(self, module):
        module.requires_grad_(False).eval()
        self._frozen = [*getattr(self, "_frozen", []), module]
        return module

    def train(self, mode=True):
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()  # no dropout, no running-statistics updates in a frozen teacher
        return self

    def after_optimizer_step(self):
        pass


class NonFiniteLossError(UserError, RuntimeError):
    pass


class SimulatedCrash(RuntimeError):
    pass


class RunDirBusyError(UserError, RuntimeError):
    pass


class StoppedForRequeue(UserError, RuntimeError):
    """Raised after checkpoint.pt was saved because request_stop() was called; running the same command resumes."""


# --- the step ----------------------------------------------------------------------------------------------------
def train_step(model, objective, optimizer, params, batch, generator, grad_clip=0.0, autocast=None,
               before_update=None, accum_steps=1, env=None):
    """One update of the weights. -> (loss, logs). `model` is the objective, wrapped in DDP with several ranks.

    Raises NonFiniteLossError BEFORE the update when the loss or the gradient is not finite, so the weights stay
    those of the last good step. before_update() runs once both are known to be finite (a due checkpoint).
    """
    autocast = autocast or contextlib.nullcontext()
    optimizer.zero_grad(set_to_none=True)
    if accum_steps == 1:
        with autocast:
            loss, logs = model(batch, generator)
        loss.backward()  # with DDP the gradients are averaged over ranks here, so every rank sees the same norm
    else:  # the same gradient, `accum_steps` micro-batches at a time
        loss, logs = accumulated_backward(objective, batch, generator, accum_steps, autocast)
        average_gradients(params, env)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        raise NonFiniteLossError(f"loss is {loss.item():.4g}, gradient norm {grad_norm.item():.4g}")
    if before_update is not None:
        before_update()
    optimizer.step()
    objective.after_optimizer_step()
    return loss, logs


def _rows(batch, start, stop):
    return {k: v[start:stop] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in batch.items()}


def accumulated_backward(objective, batch, generator, accum_steps, autocast=contextlib.nullcontext()):
    """Gradients of the whole batch's loss, computed `accum_steps` micro-batches at a time (open_clip's
    --accum-freq, generalised to every loss that is a function of the batch's features).

    1. Without gradient, encode every micro-batch and keep its features (teacher features too, once).
    2. For each micro-batch: encode it again WITH gradient, put its rows in place of the cached ones, compute the
       FULL-batch loss and backward. Summed over micro-batches this is exactly ∇ of the full-batch loss, so
       batch-wide softmaxes (InfoNCE, HyCD, m²-mix) and batch statistics stay those of the whole batch.
    The objective's own randomness (RaFA's r, m²-mix's λ) is replayed from the same generator state each time, and
    0-dim features (the logit scale) keep their gradient in the first micro-batch only, so that they count once.
    Costs one extra forward of the trainable towers per sample. Needs objective.encode / encode_teacher /
    loss_from_features (refine.py and both ProCLIP stages have them) and no active dropout (refused: the recompute
    would draw other masks). Returns (loss, logs) of the full batch.
    """
    size = len(next(v for v in batch.values() if torch.is_tensor(v) or isinstance(v, list)))
    if size % accum_steps:
        raise ConfigError(f"accum_steps={accum_steps} must divide the per-rank batch of {size}; change batch_size "
                          f"or accum_steps")
    step = size // accum_steps
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in objective.modules()):
        raise ConfigError(f"accum_steps={accum_steps} with active dropout: the recomputed micro-batches would draw "
                          f"other masks than the cached ones; set the dropout to 0 (e.g. adapter_dropout=0)")
    micro = [_rows(batch, i * step, (i + 1) * step) for i in range(accum_steps)]
    with torch.no_grad(), autocast:
        cached = [{**objective.encode(m), **objective.encode_teacher(m)} for m in micro]
    start_state = generator.get_state()
    for j, m in enumerate(micro):
        with autocast:
            live = objective.encode(m)
            features = {}
            for key, value in cached[0].items():
                if value.dim() == 0:  # a parameter of the loss itself (logit scale): its gradient counts once
                    features[key] = live[key] if j == 0 else value
                else:
                    features[key] = torch.cat([live[key] if i == j and key in live else c[key]
                                               for i, c in enumerate(cached)])
            generator.set_state(start_state)
            loss, logs = objective.loss_from_features(features, generator)
        loss.backward()
    return loss.detach(), logs


# --- the loop ----------------------------------------------------------------------------------------------------
def train(cfg, objective, dataset, run_dir, export, collate_fn=collate_pairs, env=None):
    env = env or init_distributed(cfg.device)
    say = print if env.is_main else (lambda *a, **k: None)
    final_path, ckpt_path = os.path.join(run_dir, "model.pt"), os.path.join(run_dir, "checkpoint.pt")
    if os.path.exists(final_path):
        say(f"{final_path} exists: run already finished, skipping (delete it to train again)")
        return final_path
    check_loop_config(cfg)
    if cfg.accum_steps > 1 and not hasattr(objective, "loss_from_features"):
        raise ConfigError(f"accum_steps={cfg.accum_steps}: {type(objective).__name__} has no feature-caching path "
                          f"(encode / loss_from_features), so only accum_steps=1 gives the big-batch update; "
                          f"use accum_steps=1 with more GPUs or a smaller batch_size")
    if cfg.image_cache and getattr(dataset, "decode_once", None):  # same pixels, decoded once instead of every epoch
        dataset.decode_once(cfg.image_cache)
    sampler = EpochBatches(len(dataset), cfg.batch_size, cfg.seed, env.rank, env.world_size)
    steps_per_epoch = sampler.num_batches
    if steps_per_epoch == 0:
        raise ValueError(f"{dataset.source}: {len(dataset)} items is fewer than one batch (batch_size="
                         f"{cfg.batch_size}); lower batch_size")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    fingerprint = run_fingerprint(cfg, steps_per_epoch=steps_per_epoch, total_steps=total_steps)

    with own_run_dir(run_dir, env), stop_on_signals():
        # --- state: objective, optimiser, RNGs; resumed from checkpoint.pt when there is one -------------------
        torch.manual_seed(cfg.seed)
        objective.to(env.device)
        params = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                      weight_decay=cfg.weight_decay, fused=True)  # one kernel: 7x faster on CPU
        generator = torch.Generator().manual_seed(cfg.seed)  # the objective's own randomness (RaFA's r, mixup λ)
        step, skipped, saved_step = 0, 0, None
        if os.path.exists(ckpt_path):
            ckpt = load_checkpoint_file(ckpt_path)
            check_fingerprint(ckpt, fingerprint, ckpt_path, cfg.resume, say)
            try:
                objective.load_state_dict(ckpt["objective"])
                optimizer.load_state_dict(ckpt["optimizer"])
            except (RuntimeError, ValueError, KeyError) as e:
                raise ValueError(f"{ckpt_path} does not fit this run's model ({str(e).splitlines()[0]}); use a new "
                                 f"run_dir or delete the checkpoint") from None
            set_rng_states(ckpt["rng"], generator)
            step, skipped = ckpt["step"], ckpt["skipped_images"]
            saved_step = step
            say(f"resumed from {ckpt_path} at step {step}/{total_steps}")
        if env.is_main:
            save_resolved_config(cfg, run_dir)

        def save_checkpoint(at_step, rng):
            nonlocal saved_step
            if env.is_main:
                atomic_torch_save({"objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
                                   "rng": rng, "step": at_step, "skipped_images": skipped,
                                   "fingerprint": fingerprint}, ckpt_path)
            saved_step = at_step
            barrier(env)

        model = wrap_ddp(objective, env) if cfg.accum_steps == 1 else objective  # accumulation averages by hand
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.precision == "bf16" else None
        log_file = open(os.path.join(run_dir, "log.jsonl"), "a") if env.is_main else None
        say(f"training {sum(p.numel() for p in params) / 1e6:.2f}M parameters for {total_steps} steps "
            f"({steps_per_epoch}/epoch, global batch {cfg.batch_size}, {env.world_size} rank(s), {env.device})")
        objective.train()
        start_time, start_step, checkpoint_due = time.time(), step, False
        while step < total_steps:
            epoch, first_batch = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            sampler.set_position(epoch, first_batch)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_fn,
                                pin_memory=env.device.type == "cuda", worker_init_fn=_die_with_parent,
                                generator=torch.Generator().manual_seed(cfg.seed + epoch))
            for batch in loader:
                if step == cfg.crash_at_step:
                    raise SimulatedCrash(f"crash_at_step={step}")
                check_batch(batch, step, dataset)
                lr = lr_at(step, cfg, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # A checkpoint that is due is written in the middle of this step, once the weights it holds have
                # given a finite loss and gradient, before they are updated: it never holds poisoned weights.
                # the RNG states as of before this step, for a checkpoint of the weights before it
                save_now = (lambda rng=rng_states(generator): save_checkpoint(step, rng)) if checkpoint_due else None
                try:
                    loss, logs = train_step(model, objective, optimizer, params, _to_device(batch, env.device),
                                            generator, cfg.grad_clip, autocast, save_now, cfg.accum_steps, env)
                except NonFiniteLossError as e:
                    last = (f"The last good checkpoint is {ckpt_path} (step {saved_step}): a lower lr (or "
                            f"precision=fp32) with resume=force resumes from it" if saved_step is not None else
                            "No checkpoint was written (no earlier weights were verified good); start again with "
                            "a lower lr, or precision=fp32")
                    raise NonFiniteLossError(f"step {step}: {e}; stopped before updating the weights. {last}") \
                        from None
                step += 1
                skipped += batch["skipped"]
                checkpoint_due = step % cfg.checkpoint_every == 0 and step < total_steps
                if step % cfg.log_every == 0 or step == total_steps:
                    logged = mean_over_ranks({"loss": loss.detach(), **logs}, env)  # of the global batch
                    record = {"step": step, "epoch": epoch, "lr": lr, **{k: float(v) for k, v in logged.items()},
                              "skipped_images": skipped,
                              "steps_per_s": round((step - start_step) / (time.time() - start_time), 3)}
                    if env.is_main:
                        print(json.dumps(record), flush=True)
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                if step >= total_steps:
                    break
                if _stop_agreed(env):
                    request_stop(False)  # served: a later run in this process starts afresh
                    save_checkpoint(step, rng_states(generator))
                    say(f"stopped at step {step}/{total_steps} on request (signal); saved {ckpt_path}")
                    raise StoppedForRequeue(f"stopped at step {step}/{total_steps}; {ckpt_path} holds the state: "
                                            f"run the same command to resume")
        if skipped:
            say(f"WARNING: {skipped} unreadable training images were skipped (see skipped_images in log.jsonl)")

        # --- export: after a last checkpoint, so that a failed export (a full disk) loses nothing ---------------
        save_checkpoint(step, rng_states(generator))
        if env.is_main:
            log_file.close()
            export(objective, final_path)
            os.remove(ckpt_path)  # model.pt now holds the result; the resumable state is no longer needed
            say(f"wrote {final_path}")
        barrier(env)
    return final_path


# --- bookkeeping -------------------------------------------------------------------------------------------------
def check_loop_config(cfg):
    """The loop's own keys, checked before anything is loaded or written."""
    for key in ("epochs", "batch_size", "accum_steps", "log_every", "checkpoint_every"):
        if getattr(cfg, key) < 1:
            hint = " (epochs=0 would train nothing)" if key == "epochs" else ""
            raise ConfigError(f"{key}={getattr(cfg, key)} must be at least 1{hint}")
    for key in ("max_steps", "warmup_steps", "num_workers", "grad_clip"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}={getattr(cfg, key)} must not be negative")
    for key, valid in (("precision", ("fp32", "bf16")), ("schedule", ("constant", "cosine")),
                       ("resume", ("auto", "force"))):
        if getattr(cfg, key) not in valid:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: use {' or '.join(valid)}")


def check_batch(batch, step, dataset):
    if batch["skipped"] and not batch["captions"]:
        raise ValueError(f"step {step}: every image of the batch was unreadable ({dataset.source}); check the "
                         f"image files (skipped so far are counted as skipped_images in log.jsonl)")


def file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def run_fingerprint(cfg, **derived):
    """Everything that shapes the result: the config (less NOT_FINGERPRINTED), the content of every file it names
    (training data, starting weights, stage-1 adapter, prior), and derived sizes. Image folders are not hashed."""
    fingerprint = {k: v for k, v in sorted(vars(cfg).items()) if k not in NOT_FINGERPRINTED}
    for key, value in list(fingerprint.items()):
        if isinstance(value, str) and value and os.path.isfile(value):
            fingerprint[f"{key} (sha256)"] = file_digest(value)
    return {**fingerprint, **derived}


def check_fingerprint(ckpt, fingerprint, ckpt_path, resume, say):
    stored = ckpt.get("fingerprint", {})
    differ = sorted(k for k in stored.keys() | fingerprint.keys() if stored.get(k) != fingerprint.get(k))
    if not differ:
        return
    details = "; ".join(f"{k}: {stored.get(k, '(absent)')!r} -> {fingerprint.get(k, '(absent)')!r}"
                        for k in differ[:6])
    if resume != "force":
        raise ConfigError(f"{ckpt_path} was written by a run with another configuration or data ({details}). Use "
                          f"a new run_dir, delete the checkpoint, or pass resume=force to resume it anyway")
    say(f"WARNING: resume=force: resuming {ckpt_path} although {details}")


@contextlib.contextmanager
def own_run_dir(run_dir, env):
    """Only one process trains in a run_dir: an exclusive lock on run_dir/.lock (released when the process ends,
    even by kill -9), holding the owner's pid and host. Then the temp files of killed writers are removed."""
    if not env.is_main:  # the other ranks of the same run
        yield
        return
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, ".lock")
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise RunDirBusyError(f"{run_dir} is in use by {holder} (lock {path}); wait for that run to end or stop "
                               f"it, or use another run_dir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        lock.flush()
        for name in remove_stale_temp_files(run_dir):
            print(f"removed {os.path.join(run_dir, name)}, left by a run that was killed while writing")
        yield


def _die_with_parent(worker_id):
    """DataLoader workers end with the trainer, even when it is killed with SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def lr_at(step, cfg, total_steps):
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


class EpochBatches(Sampler):
    """This rank's share of each global batch of a seeded per-epoch permutation, starting at `start_batch`."""

    def __init__(self, num_items, global_batch, seed, rank=0, world_size=1):
        if global_batch % world_size:
            raise ValueError(f"batch_size={global_batch} must be divisible by the number of ranks ({world_size})")
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.rank, self.per_rank = rank, global_batch // world_size
        self.num_batches = num_items // global_batch  # drop the last partial batch: every step is a full batch
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch, start_batch):
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        seeded = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=seeded)
        for b in range(self.start_batch, self.num_batches):
            first = b * self.global_batch + self.rank * self.per_rank
            yield order[first:first + self.per_rank].tolist()

    def __len__(self):
        return self.num_batches - self.start_batch


def rng_states(generator):
    states = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states, generator):
    torch.set_rng_state(states["torch"])
    generator.set_state(states["generator"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _to_device(batch, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# --- stopping early on request: a signal (Ctrl-C, SIGTERM, SLURM's time limit; see slurm/) -------------------------
# A signal can arrive mid-step, when the optimiser may have updated only part of the weights, so a handler only
# calls request_stop(). The loop then saves checkpoint.pt at the next step boundary and raises StoppedForRequeue.
_stop_requested = False


def request_stop(requested=True):
    global _stop_requested
    _stop_requested = requested


def _stop_agreed(env):
    """True on every rank as soon as one rank was asked to stop, so that all ranks stop after the same step.
    With several ranks this costs one all-reduce of one number per step."""
    if env.world_size == 1:
        return _stop_requested
    flag = torch.tensor([float(_stop_requested)], device=env.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Ctrl-C or SIGTERM: save at the next step boundary and stop (a second Ctrl-C interrupts at once). Signals that
    someone else already handles (the SLURM launcher) are left alone."""
    defaults = (signal.SIG_DFL, signal.default_int_handler)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signals}
    mine = [s for s in signals if previous[s] in defaults]

    def handler(signum, frame):
        request_stop()
        signal.signal(signum, previous[signum])  # the next one acts at once
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping",
              flush=True)

    for s in mine:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in mine:
            signal.signal(s, previous[s])
