"""Process group set-up from the launcher's environment (env://), and the few collectives the
trainer uses.

    torchrun --nproc_per_node 8 -m train --config configs/rn50_imagenet.yaml
    sbatch tools/slurm_train.sbatch        (srun starts the ranks and sets the same variables)

One process per GPU: device cuda:LOCAL_RANK, NCCL. Without a GPU, one process per CPU rank on
gloo. Without torchrun (no WORLD_SIZE), a single process and no process group.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    local_world: int = 1  # ranks on this node (they share its cores)
    # A gloo group over the same ranks for host-side votes (train/stop.py): collectives on it
    # neither wait for the device nor queue behind the gradients' all-reduces. None for one process.
    cpu_group: dist.ProcessGroup | None = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> DistInfo:
    """Read RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE (and MASTER_ADDR/MASTER_PORT for the
    group's store), pick the device, init the group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    timeout = timedelta(minutes=30)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, store=_restart_safe_store(world, timeout), rank=rank, world_size=world,
                                timeout=timeout, **kwargs)
    cpu_group = dist.new_group(backend="gloo", timeout=timeout) if world > 1 else None
    return DistInfo(rank, world, local_rank, device, local_world, cpu_group)


def _restart_safe_store(world: int, timeout: timedelta) -> dist.Store | None:
    """torchrun's agent keeps one TCPStore across `--max-restarts` restarts, so a restarted group
    can read the dead group's connection keys and hang in init (pytorch/pytorch#135712). On one
    node all workers share one restart count: give each attempt its own key prefix. Elsewhere
    None: the default env:// store (multi-node restarts need TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1)."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if env.get("GROUP_WORLD_SIZE") != "1":
        if env.get("TORCHELASTIC_MAX_RESTARTS", "0") != "0" and env.get("RANK") == "0":
            print("warning: torchrun --max-restarts on several nodes can hang on restart; launch with "
                  "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (pytorch/pytorch#135712)", file=sys.stderr, flush=True)
        return None
    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"firehose/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `t` over ranks in place (no-op for one process); returns `t`."""
    if info.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if `flag` is True on any rank (one small all-reduce; syncs)."""
    if info.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=info.device)
    return all_reduce_sum(t, info).item() > 0


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers of `module` (BN statistics), in place; no-op for one process.
    Each rank's own batches move its copy, so without this every rank evaluates different weights
    from the ones the checkpoint (rank 0's) holds."""
    if info.world > 1:
        for t in module.buffers():
            dist.broadcast(t, src=0)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def all_gather(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's `t` (same shape on every rank), in rank order; [t] for one process."""
    if info.world == 1:
        return [t]
    out = [torch.empty_like(t) for _ in range(info.world)]
    dist.all_gather(out, t)
    return out


def all_gather_object(obj: object, info: DistInfo) -> list:
    """Every rank's picklable `obj`, in rank order; [obj] for one process."""
    if info.world == 1:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_now(code: int) -> None:
    """Leave at once after a fatal error on one rank: no collective, no process-group teardown that
    would wait for ranks still inside a collective. torchrun sees the exit and stops the other ranks
    at once, instead of NCCL's timeout (30 min) running out first."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
