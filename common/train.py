"""The training loop every stage shares. Read `train_step` first: it is the whole update, in one screen.

A stage builds an `Objective` (the contract is in its docstring) and calls

    train(cfg, objective, dataset, run_dir, export)

which runs `train_step` on every batch of a seeded per-epoch order (`EpochBatches`) with the learning rate of
`lr_at`, writes one JSON line of metrics per log step to run_dir/log.jsonl (and a progress line, common/watch.py),
scores the held-out split (`score_holdout`) before the first step, after each epoch and every `holdout_every`
steps, and at the end calls `export(objective, run_dir/model.pt)`; a run whose model.pt exists is skipped. What
keeps the run directory safe (one owner, exact resume from checkpoint.pt, stopping on Ctrl-C / SIGTERM at a step
boundary) is in common/run_dir.py; the loop calls it in a few lines. A checkpoint is written only once its weights
have produced a finite loss and gradient (the next step's), again just before the export, and when a stop is
requested: a job runner with signals of its own (slurm/job.py) calls request_stop().
"""
import contextlib
import functools
import math
import os
import random
import time

import numpy as np

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from common.config import ConfigError, UserError, save_resolved_config
from common.data import collate_pairs
from common.distributed import barrier, init_distributed, mean_over_ranks
from common.run_dir import (Checkpoint, RunDir, StoppedForRequeue, die_with_parent, fingerprint, request_stop,
                            rng_states)
from common.watch import RunLog, check_report_to

# Keys every training stage accepts, merged into the stage's own DEFAULTS.
TRAIN_DEFAULTS = dict(
    epochs=1,                 # passes over the training set
    max_steps=0,              # >0: stop after this many steps (smoke tests); the LR schedule spans them
    batch_size=512,           # GLOBAL batch, split evenly over ranks
    accum_steps=1,            # >1: each rank's batch in this many micro-batches, same update (accumulated_backward)
    lr=1e-6,                  # AdamW's learning rate (the peak, with warm-up or cosine)
    schedule="constant",      # constant | cosine (after warmup_steps of linear warm-up)
    warmup_steps=0,           # steps of linear warm-up from lr/warmup_steps to lr
    weight_decay=0.1,         # applied to all parameters (docs/methods.md §1)
    beta1=0.9,
    beta2=0.999,
    eps=1e-8,
    grad_clip=0.0,            # 0 = off (the papers use none)
    precision="fp32",         # fp32 | bf16 (autocast, GPU only)
    seed=0,                   # data order, the objective's random draws (RaFA, m²-mix), fresh weights
    seeds=[],                 # train the run of each of these seeds in turn, in this one process (the imports paid
                              #   once): "{seed}" in run_dir (and pretrained, adapter) becomes the seed
    num_workers=2,            # DataLoader processes decoding images (0: in the trainer itself)
    device="auto",            # auto | cpu | cuda
    log_every=10,             # steps between log.jsonl lines and printed progress lines (docs/watching.md)
    holdout_every=0,          # >0: also score the held-out split every this many steps (its curve in log.jsonl);
                              #   0: before the first step and after each epoch only. Changes no weight
    report_to="",             # "" | tensorboard: the log's scalars also go to run_dir/tensorboard (optional package)
    checkpoint_every=100,     # steps between resumable checkpoints
    resume="auto",            # auto: resume checkpoint.pt if its fingerprint matches | force: resume it anyway
    image_cache="",           # a folder: decode each image once into it (common/imagecache.py); "" = per item.
                              #   For sets whose decoded size is known to be small (the toy presets set it)
    image_cache_max_gb=4.0,   # image_cache refuses when images x 3xHxW bytes would exceed this (0 = no limit)
)


class Objective(nn.Module):
    """What a stage hands to train(): a module that holds everything that must survive a restart, and its loss.

    A stage writes three methods; `forward` is built from them, so gradient accumulation can reuse them:
    - encode(batch) -> {name: tensor}: the trainable towers' features of `batch`, WITH gradient. Each tensor has
      one row per sample, except 0-dim ones, which are parameters of the loss itself (the logit scale).
    - encode_teacher(batch) -> {name: tensor}: what frozen parts (a teacher) make of `batch`, without gradient,
      one row per sample. Default: nothing.
    - loss_from_features(features, generator) -> (loss, {name: scalar tensor to log}): the loss of the batch from
      the union of both dicts. Draw all randomness from `generator` (its state is checkpointed, so resume is
      exact).
    forward(batch, generator) = loss_from_features({**encode(batch), **encode_teacher(batch)}, generator), where
    `batch` is this rank's share of the global batch.

    The accumulation contract (accumulated_backward, accum_steps > 1): the loss may depend on the whole batch
    (batch-wide softmaxes, batch statistics) but only through these features, so that the features of one
    micro-batch can be recomputed with gradient while the others come from a cache; and no active dropout.

    Also:
    - after_optimizer_step(): called after every update (an EMA teacher, the temperature clamp). Default: nothing.
    - self.freeze(module): a frozen part (a teacher): no gradients, and it stays in eval mode in train().
    - gap_features = (image key, text key) of encode's features: the held-out split's score adds the modality-gap
      statistics of those (docs/methods.md §3). Default: None (no gap statistics).
    """
    gap_features = None

    def forward(self, batch, generator):
        return self.loss_from_features({**self.encode(batch), **self.encode_teacher(batch)}, generator)

    def encode(self, batch):
        raise NotImplementedError(f"{type(self).__name__}.encode")

    def encode_teacher(self, batch):
        return {}

    def loss_from_features(self, features, generator):
        raise NotImplementedError(f"{type(self).__name__}.loss_from_features")

    def after_optimizer_step(self):
        pass

    def freeze(self, module):
        module.requires_grad_(False).eval()
        self._frozen = [*getattr(self, "_frozen", []), module]
        return module

    def train(self, mode=True):
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()  # no dropout, no running-statistics updates in a frozen teacher
        return self


@torch.no_grad()
def clamp_logit_scale(logit_scale, max_logit_scale):
    """CLIP's clamp of its learnable temperature, after every update: the log-scale parameter in [0, ln max]."""
    logit_scale.clamp_(0, math.log(max_logit_scale))


class NonFiniteLossError(UserError, RuntimeError):
    pass


# --- the step ----------------------------------------------------------------------------------------------------
def train_step(objective, optimizer, batch, generator, autocast=contextlib.nullcontext(), grad_clip=0.0,
               accum_steps=1, before_update=None):
    """One update of the weights -> (loss, logs).

    With several ranks each one has its share of the global batch; the objective computes the global batch's loss
    (it gathers features where the loss spans the batch), and `average_gradients` leaves every rank the same mean
    gradient, so the ranks take the same step. Raises NonFiniteLossError BEFORE the update when the loss or the
    gradient is not finite, so the weights stay those of the last good step. before_update() runs once both are
    known to be finite (a due checkpoint).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    if accum_steps == 1:
        with autocast:
            loss, logs = objective(batch, generator)
        loss.backward()
    else:  # the same gradient, `accum_steps` micro-batches at a time
        loss, logs = accumulated_backward(objective, batch, generator, accum_steps, autocast)
    average_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        raise NonFiniteLossError(f"loss is {loss.item():.4g}, gradient norm {grad_norm.item():.4g}")
    if before_update is not None:
        before_update()
    optimizer.step()
    objective.after_optimizer_step()
    return loss, logs


def average_gradients(params):
    """Mean of each parameter's gradient over the ranks, in one flat all-reduce (what DistributedDataParallel does
    during backward); nothing with one process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _rows(batch, start, stop):
    return {k: v[start:stop] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in batch.items()}


def accumulated_backward(objective, batch, generator, accum_steps, autocast=contextlib.nullcontext()):
    """Gradients of the whole batch's loss, computed `accum_steps` micro-batches at a time (open_clip's
    --accum-freq, generalised to every loss that is a function of the batch's features; Objective's contract).

    1. Without gradient, encode every micro-batch and keep its features (teacher features too, once).
    2. For each micro-batch: encode it again WITH gradient, put its rows in place of the cached ones, compute the
       FULL-batch loss and backward. Summed over micro-batches this is exactly ∇ of the full-batch loss, so
       batch-wide softmaxes (InfoNCE, HyCD, m²-mix) and batch statistics stay those of the whole batch.
    The objective's own randomness (RaFA's r, m²-mix's λ) is replayed from the same generator state each time, and
    0-dim features (the logit scale) keep their gradient in the first micro-batch only, so that they count once.
    Costs one extra forward of the trainable towers per sample. Active dropout is refused (the recompute would
    draw other masks). Returns (loss, logs) of the full batch.
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


# --- the held-out split ----------------------------------------------------------------------------------------
@torch.no_grad()
def score_holdout(objective, held_out, cfg, env, collate_fn=collate_pairs, autocast=contextlib.nullcontext()):
    """The loss (and logs) of the objective on the held-out split, and the modality-gap statistics of its
    `gap_features` (docs/methods.md §3; separability aside: it trains a probe, evaluate.py reports it) -> {name:
    value}, or None when there is no held-out split. Every rank calls it; the main rank gets the numbers.

    Scoring leaves training exactly as it was: it runs in eval mode (no dropout, no BatchNorm statistics updated)
    without gradients, draws the objective's randomness from a generator of its own seeded with cfg.seed (the same
    draws at every score, so scores after a resume are the same), and puts back the global RNG states it may touch
    (torch, CUDA, Python, NumPy). The split is read in its order, in batches of batch_size split over the ranks as
    in training (the loss of a batch is the loss of the global batch), each encoded accum_steps rows-chunks at a
    time; the loss is the mean over batches weighted by their size.
    """
    if held_out is None or len(held_out) < env.world_size:
        return None
    saved = (torch.get_rng_state(), random.getstate(), np.random.get_state(),
             torch.cuda.get_rng_state(env.device) if env.device.type == "cuda" else None)
    was_training = objective.training
    objective.eval()
    try:
        batches = []
        for start in range(0, len(held_out), cfg.batch_size):
            rows = range(start, min(start + cfg.batch_size, len(held_out)))
            share = len(rows) // env.world_size
            if share:
                batches.append(list(rows[env.rank * share:(env.rank + 1) * share]))
        loader = DataLoader(held_out, batch_sampler=batches, num_workers=cfg.num_workers, collate_fn=collate_fn,
                            worker_init_fn=die_with_parent, generator=torch.Generator().manual_seed(cfg.seed))
        generator = torch.Generator().manual_seed(cfg.seed)
        totals, count, pairs = {}, 0, []
        for batch in loader:
            if not batch["captions"]:
                continue  # every image of the batch was unreadable
            batch = _to_device(batch, env.device)
            with autocast:
                if type(objective).loss_from_features is Objective.loss_from_features:  # forward alone
                    features, (loss, logs) = {}, objective(batch, generator)
                else:
                    features = _encoded(objective, batch, cfg.accum_steps)
                    loss, logs = objective.loss_from_features(features, generator)
            values = mean_over_ranks({"loss": loss.float(), **{k: v.float() for k, v in logs.items()}}, env)
            rows = len(batch["captions"]) * env.world_size
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + float(value) * rows
            count += rows
            if objective.gap_features and features:
                pairs.append([_gathered(features[key].float(), env) for key in objective.gap_features])
    finally:
        objective.train(was_training)
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])
        if saved[3] is not None:
            torch.cuda.set_rng_state(saved[3], env.device)
    if not count:
        return None
    scores = {key: total / count for key, total in totals.items()}
    if pairs and count >= 2 and env.is_main:
        from common.metrics import modality_gap_stats
        image, text = (torch.cat(part).cpu() for part in zip(*pairs))
        scores.update(modality_gap_stats(image, text, probe=False))
    return {**scores, "holdout_items": count}


def _encoded(objective, batch, accum_steps):
    """{name: features} of a batch (Objective.encode and encode_teacher), `accum_steps` chunks of rows at a time
    when they divide the batch: the memory of one training forward without its gradients."""
    size = len(batch["captions"])
    chunks = accum_steps if accum_steps > 1 and size % accum_steps == 0 else 1
    step = size // chunks
    parts = [_rows(batch, i * step, (i + 1) * step) for i in range(chunks)]
    encoded = [{**objective.encode(part), **objective.encode_teacher(part)} for part in parts]
    return {key: value if value.dim() == 0 else torch.cat([e[key] for e in encoded])
            for key, value in encoded[0].items()}


def _gathered(tensor, env):
    """The rows of every rank, in rank order (all ranks hold the same number)."""
    if env.world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(env.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


# --- the loop ----------------------------------------------------------------------------------------------------
def train(cfg, objective, dataset, run_dir, export, collate_fn=collate_pairs, env=None, held_out=None):
    """Train `objective` on `dataset` (see the module docstring). `held_out`: a dataset of the same kind, never
    trained on, scored before the first step, after every epoch and every cfg.holdout_every steps (score_holdout)."""
    env = env or init_distributed(cfg.device)
    say = print if env.is_main else (lambda *a, **k: None)
    final_path = os.path.join(run_dir, "model.pt")
    if os.path.exists(final_path):
        say(f"{final_path} exists: run already finished, skipping (delete it to train again)")
        return final_path
    check_loop_config(cfg)
    if cfg.accum_steps > 1 and getattr(type(objective), "loss_from_features", None) in (
            None, Objective.loss_from_features):
        raise ConfigError(f"accum_steps={cfg.accum_steps}: {type(objective).__name__} has no feature-caching path "
                          f"(encode / loss_from_features), so only accum_steps=1 gives the big-batch update; "
                          f"use accum_steps=1 with more GPUs or a smaller batch_size")
    if cfg.image_cache and getattr(dataset, "decode_once", None):  # same pixels, decoded once instead of every epoch
        dataset.decode_once(cfg.image_cache, cfg.image_cache_max_gb)
    sampler = EpochBatches(len(dataset), cfg.batch_size, cfg.seed, env.rank, env.world_size)
    steps_per_epoch = sampler.num_batches
    if steps_per_epoch == 0:
        raise ValueError(f"{dataset.source}: {len(dataset)} items is fewer than one batch (batch_size="
                         f"{cfg.batch_size}); lower batch_size")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)

    with RunDir(run_dir, env) as run:
        # --- state: objective, optimiser, RNGs; resumed from checkpoint.pt when there is one -------------------
        torch.manual_seed(cfg.seed)
        objective.to(env.device)
        params = [p for p in objective.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                      weight_decay=cfg.weight_decay, fused=True)  # one kernel: 7x faster on CPU
        generator = torch.Generator().manual_seed(cfg.seed)  # the objective's own randomness (RaFA's r, mixup λ)
        checkpoint = Checkpoint(os.path.join(run_dir, "checkpoint.pt"), objective, optimizer,
                                fingerprint(cfg, steps_per_epoch=steps_per_epoch, total_steps=total_steps), env)
        step, skipped = checkpoint.resume(generator, cfg.resume, say)
        if checkpoint.saved_step is not None:
            say(f"resumed from {checkpoint.path} at step {step}/{total_steps}")
        if env.is_main:
            save_resolved_config(cfg, run_dir)

        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.precision == "bf16" else \
            contextlib.nullcontext()
        log = RunLog(run_dir, total_steps, steps_per_epoch, step, cfg.report_to) if env.is_main else None
        say = log.say if env.is_main else say
        say(f"training {sum(p.numel() for p in params) / 1e6:.2f}M parameters for {total_steps} steps "
            f"({steps_per_epoch}/epoch, global batch {cfg.batch_size}, {env.world_size} rank(s), {env.device})")
        left_out = len(dataset) - steps_per_epoch * cfg.batch_size  # EpochBatches trains full batches only
        if left_out:
            say(f"each epoch leaves out {left_out} of the {len(dataset)} training items (the last, partial batch "
                f"of its shuffle at batch_size={cfg.batch_size})")
        objective.train()
        checkpoint_due = False

        def score(step):  # the held-out split, after `step` steps: a log line (none when there is no split)
            start = time.time()
            values = score_holdout(objective, held_out, cfg, env, collate_fn, autocast)
            if values is not None and env.is_main:
                log.holdout(step, max(step - 1, 0) // steps_per_epoch, values, time.time() - start)

        if step == 0:
            score(0)
        while step < total_steps:
            epoch, first_batch = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            sampler.set_position(epoch, first_batch)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_fn,
                                pin_memory=env.device.type == "cuda", worker_init_fn=die_with_parent,
                                generator=torch.Generator().manual_seed(cfg.seed + epoch))
            for batch in loader:
                check_batch(batch, step, dataset)
                lr = lr_at(step, cfg, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # A due checkpoint holds the weights as of before this step, with the RNG states as of before it;
                # train_step writes it once those weights have given a finite loss and gradient, before updating
                # them, so that it never holds poisoned weights.
                save = functools.partial(checkpoint.save, step, skipped, rng_states(generator)) \
                    if checkpoint_due else None
                try:
                    loss, logs = train_step(objective, optimizer, _to_device(batch, env.device), generator, autocast,
                                            cfg.grad_clip, cfg.accum_steps, before_update=save)
                except NonFiniteLossError as e:
                    raise NonFiniteLossError(f"step {step}: {e}; stopped before updating the weights. "
                                             f"{checkpoint.last_good()}") from None
                step += 1
                skipped += batch["skipped"]
                checkpoint_due = step % cfg.checkpoint_every == 0 and step < total_steps
                if step % cfg.log_every == 0 or step == total_steps:
                    logged = mean_over_ranks({"loss": loss.detach(), **logs}, env)  # of the global batch
                    if env.is_main:
                        log.train(step, epoch, lr, {k: float(v) for k, v in logged.items()}, skipped)
                elif env.is_main:
                    log.step_done(step)
                if step % steps_per_epoch == 0 or step == total_steps or \
                        (cfg.holdout_every and step % cfg.holdout_every == 0):
                    score(step)
                if step >= total_steps:
                    break
                if run.stop_requested():  # a signal (Ctrl-C, SIGTERM, SLURM's time limit): save, then stop
                    request_stop(False)  # served: a later run in this process starts afresh
                    checkpoint.save(step, skipped, rng_states(generator))
                    say(f"stopped at step {step}/{total_steps} on request (signal); saved {checkpoint.path}")
                    raise StoppedForRequeue(f"stopped at step {step}/{total_steps}; {checkpoint.path} holds the "
                                            f"state: run the same command to resume")
        if skipped:
            say(f"WARNING: {skipped} unreadable training images were skipped (see skipped_images in log.jsonl)")

        # --- export: after a last checkpoint, so that a failed export (a full disk) loses nothing ---------------
        checkpoint.save(step, skipped, rng_states(generator))
        if env.is_main:
            log.close()
            export(objective, final_path)
            checkpoint.remove()
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
    for key in ("max_steps", "warmup_steps", "num_workers", "grad_clip", "holdout_every"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}={getattr(cfg, key)} must not be negative")
    for key, valid in (("precision", ("fp32", "bf16")), ("schedule", ("constant", "cosine")),
                       ("resume", ("auto", "force"))):
        if getattr(cfg, key) not in valid:
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: use {' or '.join(valid)}")
    check_report_to(cfg.report_to)


def check_batch(batch, step, dataset):
    if batch["skipped"] and not batch["captions"]:
        raise ValueError(f"step {step}: every image of the batch was unreadable ({dataset.source}); check the "
                         f"image files (skipped so far are counted as skipped_images in log.jsonl)")


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


def _to_device(batch, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
