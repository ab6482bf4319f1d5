"""torch.distributed set-up from the environment (torchrun, or submitit's TorchDistributedEnvironment().export()).

One process = one device. NCCL on GPUs, gloo on CPU. With WORLD_SIZE unset or 1 nothing is initialised.
With several ranks, each computes the loss of the global batch from its share (the losses gather what spans the
batch: common/losses.py gather_with_grad) and common/train.py averages the gradients (average_gradients).
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


def mean_over_ranks(values, env):
    """{name: number} averaged over ranks: each rank's loss covers its share of the global batch, so the mean is
    the value for the whole batch (what the log reports). Every rank must call it at the same step."""
    if env.world_size == 1:
        return values
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=env.device) for v in values.values()])
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / env.world_size).tolist()))
