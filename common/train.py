"""The training loop every stage shares: AdamW, LR schedule, exact resume, JSONL log, NaN guard, final export.

A stage builds an `objective`: an nn.Module whose forward(batch, generator) returns (loss, logs) and which holds
everything that must survive a restart (student, frozen or EMA teacher, adapter). Then it calls

    train(cfg, objective, dataset, run_dir, export)

Resume: `run_dir/checkpoint.pt` holds the objective, the optimiser, every RNG state and the step; the data order
is a seeded permutation per epoch, so a restarted run sees exactly the batches it had not seen yet.
Done: `export(objective, run_dir/model.pt)` writes the final weights; a run whose model.pt exists is skipped.
"""
import contextlib
import json
import math
import os
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from common.config import save_resolved_config
from common.data import collate_pairs
from common.distributed import average_gradients, barrier, init_distributed, mean_over_ranks, wrap_ddp
from common.models import atomic_torch_save, load_checkpoint_file

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
    checkpoint_every=100,     # steps between resumable checkpoints (also written on SLURM preemption)
    crash_at_step=-1,         # tests only: raise SimulatedCrash before this step, like a kill (nothing saved)
)


class NonFiniteLossError(RuntimeError):
    pass


class SimulatedCrash(RuntimeError):
    pass


class StoppedForRequeue(RuntimeError):
    """Raised after checkpoint.pt was saved because request_stop() was called; running the same command resumes."""


# --- stopping early on request (SLURM time limit or preemption; see slurm/launcher.py) -------------------------------
# A signal can arrive mid-step, when the optimiser may have updated only part of the weights, so the launcher's
# signal handler only calls request_stop(). The loop then saves checkpoint.pt at the next step boundary and raises
# StoppedForRequeue; the launcher requeues the job, and the requeued job resumes from that checkpoint.
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
        order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        for b in range(self.start_batch, self.num_batches):
            first = b * self.global_batch + self.rank * self.per_rank
            yield order[first:first + self.per_rank].tolist()

    def __len__(self):
        return self.num_batches - self.start_batch


def lr_at(step, cfg, total_steps):
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))
    raise ValueError(f"schedule={cfg.schedule!r}: use constant or cosine")


def _rng_states(generator):
    states = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states, generator):
    torch.set_rng_state(states["torch"])
    generator.set_state(states["generator"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _to_device(batch, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


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
        raise ValueError(f"accum_steps={accum_steps} must divide the per-rank batch of {size}; change batch_size "
                         f"or accum_steps")
    step = size // accum_steps
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in objective.modules()):
        raise ValueError(f"accum_steps={accum_steps} with active dropout: the recomputed micro-batches would draw "
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


def train(cfg, objective, dataset, run_dir, export, collate_fn=collate_pairs, env=None):
    env = env or init_distributed(cfg.device)
    say = print if env.is_main else (lambda *a, **k: None)
    final_path = os.path.join(run_dir, "model.pt")
    if os.path.exists(final_path):
        say(f"{final_path} exists: run already finished, skipping (delete it to train again)")
        return final_path
    if env.is_main:
        save_resolved_config(cfg, run_dir)
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={cfg.precision!r}: use fp32 or bf16")
    if cfg.accum_steps < 1:
        raise ValueError(f"accum_steps={cfg.accum_steps}: use 1 (no accumulation) or more micro-batches per step")
    if cfg.accum_steps > 1 and not hasattr(objective, "loss_from_features"):
        raise ValueError(f"accum_steps={cfg.accum_steps}: {type(objective).__name__} has no feature-caching path "
                         f"(encode / loss_from_features), so only accum_steps=1 gives the big-batch update; "
                         f"use accum_steps=1 with more GPUs or a smaller batch_size")

    # --- state: objective, optimiser, RNGs ---------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    objective.to(env.device)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)  # the objective's own randomness (RaFA's r, mixup λ)
    sampler = EpochBatches(len(dataset), cfg.batch_size, cfg.seed, env.rank, env.world_size)
    steps_per_epoch = sampler.num_batches
    if steps_per_epoch == 0:
        raise ValueError(f"{dataset.source}: {len(dataset)} items is fewer than one batch (batch_size="
                         f"{cfg.batch_size}); lower batch_size")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)

    step, skipped, ckpt_path = 0, 0, os.path.join(run_dir, "checkpoint.pt")
    if os.path.exists(ckpt_path):
        ckpt = load_checkpoint_file(ckpt_path)
        if (ckpt["steps_per_epoch"], ckpt["total_steps"]) != (steps_per_epoch, total_steps):
            raise ValueError(f"{ckpt_path} was written by a run with {ckpt['steps_per_epoch']} steps/epoch and "
                             f"{ckpt['total_steps']} steps, this one has {steps_per_epoch} and {total_steps}; "
                             f"use a new run_dir or delete the checkpoint")
        objective.load_state_dict(ckpt["objective"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_states(ckpt["rng"], generator)
        step, skipped = ckpt["step"], ckpt["skipped_images"]
        say(f"resumed from {ckpt_path} at step {step}/{total_steps}")

    def save_checkpoint():
        if env.is_main:
            atomic_torch_save({"objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
                               "rng": _rng_states(generator), "step": step, "skipped_images": skipped,
                               "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}, ckpt_path)
        barrier(env)

    model = wrap_ddp(objective, env) if cfg.accum_steps == 1 else objective  # accumulation averages by hand
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())

    # --- loop ----------------------------------------------------------------------------------------------
    log_file = open(os.path.join(run_dir, "log.jsonl"), "a") if env.is_main else None
    say(f"training {sum(p.numel() for p in params) / 1e6:.2f}M parameters for {total_steps} steps "
        f"({steps_per_epoch}/epoch, global batch {cfg.batch_size}, {env.world_size} rank(s), {env.device})")
    objective.train()
    start_time, start_step = time.time(), step
    while step < total_steps:
        epoch, first_batch = divmod(step, steps_per_epoch)
        dataset.set_epoch(epoch)
        sampler.set_position(epoch, first_batch)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_fn,
                            pin_memory=env.device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for batch in loader:
            if step == cfg.crash_at_step:
                raise SimulatedCrash(f"crash_at_step={step}")
            lr = lr_at(step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            if cfg.accum_steps > 1:
                loss, logs = accumulated_backward(objective, _to_device(batch, env.device), generator,
                                                  cfg.accum_steps, autocast)
                average_gradients(params, env)
            else:
                with autocast:
                    loss, logs = model(_to_device(batch, env.device), generator)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"step {step}: loss is {loss.item()}; stopping. The last good checkpoint ({ckpt_path}, if any) "
                    f"is kept. Try a lower lr, or precision=fp32")
            if cfg.accum_steps == 1:
                loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if hasattr(objective, "after_optimizer_step"):
                objective.after_optimizer_step()  # e.g. EMA teacher update, logit-scale clamp
            step += 1
            skipped += batch["skipped"]
            if step % cfg.log_every == 0 or step == total_steps:
                logged = mean_over_ranks({"loss": loss.detach(), **logs}, env)  # of the global batch
                record = {"step": step, "epoch": epoch, "lr": lr, **{k: float(v) for k, v in logged.items()},
                          "skipped_images": skipped,
                          "steps_per_s": round((step - start_step) / (time.time() - start_time), 3)}
                if env.is_main:
                    line = json.dumps(record)
                    print(line, flush=True)
                    log_file.write(line + "\n")
                    log_file.flush()
            if step % cfg.checkpoint_every == 0 and step < total_steps:
                save_checkpoint()
            if step >= total_steps:
                break
            if _stop_agreed(env):
                request_stop(False)  # served: a later run in this process starts afresh
                save_checkpoint()
                say(f"stopped at step {step}/{total_steps} on request (time limit or preemption); saved {ckpt_path}")
                raise StoppedForRequeue(f"stopped at step {step}/{total_steps}; {ckpt_path} holds the state")
    if skipped:
        say(f"WARNING: {skipped} unreadable training images were skipped (see skipped_images in log.jsonl)")

    # --- export --------------------------------------------------------------------------------------------
    if env.is_main:
        log_file.close()
        export(objective, final_path)
        if os.path.exists(ckpt_path):
            os.remove(ckpt_path)  # model.pt now holds the result; the resumable state is no longer needed
        say(f"wrote {final_path}")
    barrier(env)
    return final_path
