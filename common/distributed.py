"""torch.distributed set-up from the environment (torchrun, or submitit's TorchDistributedEnvironment().export()).

One process = one device. NCCL on GPUs, gloo on CPU. With WORLD_SIZE unset or 1 nothing is initialised.
"""
import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0


def resolve_device(device="auto", local_rank=0):
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda but no GPU is visible; use device=cpu (or auto)")
        device = f"cuda:{local_rank}"
    return torch.device(device)


def init_distributed(device="auto"):
    """Read RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and join the process group once."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    env = DistEnv(rank, world_size, local_rank, resolve_device(device, local_rank))
    if world_size > 1 and not dist.is_initialized():
        if env.device.type == "cuda":
            torch.cuda.set_device(env.device)
        dist.init_process_group(backend="nccl" if env.device.type == "cuda" else "gloo",
                                rank=rank, world_size=world_size)
    return env


def barrier(env):
    if env.world_size > 1:
        dist.barrier()


def wrap_ddp(module, env):
    """DistributedDataParallel around `module` (gradients averaged over ranks); the module itself with 1 rank.

    static_graph: some objectives leave a parameter out of the loss (RaFA and HyCD never use logit_scale). Plain DDP
    then never all-reduces the gradient bucket holding it: the first step silently keeps each rank's own gradients
    for that bucket (tests/test_distributed.py catches it), and the second step raises. With a static graph (the
    same parameters are used at every step, as in every stage here) DDP learns the unused ones at the first step,
    without find_unused_parameters' search of the autograd graph at every step.
    """
    if env.world_size == 1:
        return module
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids, static_graph=True)


def mean_over_ranks(values, env):
    """{name: number} averaged over ranks: each rank's loss covers its share of the global batch, so the mean is
    the value for the whole batch (what the log reports). Every rank must call it at the same step."""
    if env.world_size == 1:
        return values
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=env.device) for v in values.values()])
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / env.world_size).tolist()))


def gather_with_grad(tensor, world_size):
    """The rows of every rank, concatenated in rank order, with gradient (open_clip's ClipLoss gather_with_grad).

    A batch-wide loss computed by every rank on the gathered global batch then trains exactly the 1-process
    objective: the all-gather's backward sums each rank's gradient for a rank's rows (N copies of ∂L/∂f_r), and
    DDP's average over the N ranks divides it back, leaving ∇L. The loss value on every rank is the global one.
    """
    if world_size == 1:
        return tensor
    import torch.distributed.nn  # noqa: F401  (registers torch.distributed.nn.all_gather)
    return torch.cat(torch.distributed.nn.all_gather(tensor), dim=0)


def average_gradients(params, env):
    """Mean of each parameter's gradient over ranks, in one flat all-reduce (DDP's job, done by hand where the
    training loop runs its own backward passes, e.g. gradient accumulation in common/train.py)."""
    if env.world_size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
