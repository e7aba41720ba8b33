"""One job on many processes: torchrun's ranks, the share of a step each takes, and what they agree on.

A job process started by ``torchrun`` (``WORLD_SIZE`` > 1 in its environment) joins a process group:
gloo on CPU, NCCL on CUDA. Every rank runs the same job with the same data order (``epoch_order``
knows no ranks); of each optimizer step's items a rank takes its share (``batching.shard``), sums
its gradients and the step's statistics, and ``all_reduce_grads`` adds them up across ranks before
the update. The loss of a step is divided by the whole step's weight (its trained tokens), the same
on every rank, so the summed gradient is exactly the one a single process computes for the step, and
the loss curve does not depend on the number of processes.

The gradients are summed with one collective per bucket after the step's last micro-batch, not by
wrapping the model in ``DistributedDataParallel``: DDP reduces during a backward that runs through
its wrapper's ``forward``, while our objectives call the decoder and a chunked head directly; and a
rank may get no item in a step (the last step of an epoch can hold fewer items than there are
ranks), which DDP cannot express. Every rank then holds the same gradient, takes the same optimizer
step and keeps the same full optimizer state, so a checkpoint (rank 0 writes it) resumes on any
number of processes.

A full fine-tune on many processes also shards the decoder's layers with FSDP2 (``shard_layers``):
each rank keeps its part of every layer's weights, gradients and optimizer state and gathers a
layer's weights only while it runs, so a model too large for one device trains on several. The
embedding, the final norm and the head it is tied to stay whole on every rank and are summed as
above; they are one module's worth of memory, and FSDP would untie them. Sharded layers gather and
reduce inside every forward and backward, so every rank must run as many micro-batches as the rank
with the most (``lockstep``: the others repeat a step's shortest item with a zero loss). Rank 0
alone answers validation questions, with every layer's weights gathered first (``gathered``). A
checkpoint holds the whole weights and optimizer state (``full_state``), in the form one process
writes, so it resumes on any number of processes, sharded or not.

Without torchrun every function here is the single-process identity: rank 0 of 1.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from tunesmith.train.precision import training_device

# Gradients travel in flat buffers of about this size (as DDP's buckets): few collectives, bounded copies.
BUCKET_BYTES = 25 * 1024 * 1024
# A rank waits this long for the others at a collective: rank 0 alone scores answers or computes
# DPO's reference log-probabilities while the others wait.
TIMEOUT = timedelta(hours=2)


def is_main() -> bool:
    """Rank 0 alone writes the job's events, checkpoints and result; known from torchrun's environment
    before the group is joined."""
    return int(os.environ.get("RANK", "0")) == 0


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The processes of the job's group; 1 outside one (also where torchrun's variables are set but no
    group was joined: a share of a step is only ever taken when the others take theirs)."""
    return dist.get_world_size() if active() else 1


def local_world_size() -> int:
    """The job's processes on this machine: they share its CPUs."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def init() -> None:
    """Join torchrun's process group, once; nothing for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(training_device())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def from_main(value):
    """Rank 0's ``value`` on every rank (a random seed, a new job id, rank 0's answer scores)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on one: a stop signal reaches the ranks at different moments,
    and they must stop after the same step."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=training_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def summed(stats: Counter[str]) -> Counter[str]:
    """A step's statistics summed over the ranks; a rank with no item in the step has none."""
    if not active():
        return stats
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(stats))
    total: Counter[str] = Counter()
    for part in gathered:  # in rank order: every rank adds in the same order, and gets the same sums
        total.update(part)
    return total


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum each parameter's gradient over the ranks (a rank that computed none contributes zeros).
    Sharded parameters are left out: FSDP has summed theirs in the backward."""
    if not active():
        return
    params = [p for p in params if not isinstance(p, DTensor)]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
        if size >= BUCKET_BYTES:
            _reduce(bucket)
            bucket, size = [], 0
    if bucket:
        _reduce(bucket)


def _reduce(grads: list[torch.Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_params(model: torch.nn.Module) -> None:
    """Rank 0's trained weights on every rank before the first step, as DDP does: a fresh adapter is
    seeded the same everywhere, but nothing else should have to be for the ranks to agree."""
    if not active():
        return
    for p in model.parameters():
        if p.requires_grad:
            dist.broadcast(p.data, src=0)


# --- FSDP2: a full fine-tune's layers sharded across the ranks ------------------------------------

def shard_layers(model: torch.nn.Module) -> bool:
    """Shard each decoder layer of a full fine-tune across the ranks (FSDP2's ``fully_shard``); False,
    and nothing done, on one process. Called after ``broadcast_params`` and before the optimizer is
    made: FSDP replaces the parameters."""
    if not active():
        return False
    from torch.distributed.fsdp import fully_shard

    decoder = model.get_decoder()
    layers = list(decoder.layers)
    for layer in layers:
        fully_shard(layer)
    # The decoder as FSDP's root (it is what the objectives call), holding no weights of its own: its
    # embedding is tied to the head, which runs outside it.
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    fully_shard(decoder, ignored_params={p for p in decoder.parameters() if id(p) not in in_layers})
    for module in [*layers, decoder]:
        # Summed, not averaged (the loss is already the whole step's mean), with a plain SUM: gloo has
        # no pre-multiplied one.
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)
    return True


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def lockstep(groups: list, filler, sharded: bool) -> list[tuple[object, bool]]:
    """This rank's micro-batches, each with whether it counts, made as many as the most any rank has
    by adding ``filler`` (not counted: its loss is multiplied by zero). Unsharded, ``groups`` as they are."""
    counted = [(group, True) for group in groups]
    if not sharded:
        return counted
    most = torch.tensor([len(groups)], device=training_device())
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return counted + [(filler, False)] * (int(most.item()) - len(groups))


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a mix of sharded and whole parameters: the squares of the
    shards' gradients summed over the ranks, the whole ones' counted once."""
    if not any(isinstance(p, DTensor) for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    shards = sum((g.to_local().float().pow(2).sum() for g in grads if isinstance(g, DTensor)), torch.zeros(()))
    shards = shards.to(training_device())
    dist.all_reduce(shards)
    whole = sum((g.float().pow(2).sum() for g in grads if not isinstance(g, DTensor)), torch.zeros(()))
    norm = (shards.cpu() + whole.cpu()).sqrt()
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.to(g.device))
    return norm


@contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """Every sharded layer's weights whole on every rank, and kept whole through forwards, while rank 0
    alone runs the model (generation): no rank may gather on its own. Collective: every rank enters.
    Nothing to do for a model that is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            m.set_reshard_after_forward(True, recurse=False)
            m.reshard()


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict]:
    """The whole weights (None where they are not sharded: the model saves its own) and the optimizer
    state in the form one process has. Collective when sharded: every rank calls it, in the same order."""
    state = optimizer.state_dict()
    if not is_sharded(model):
        return None, state
    weights = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}
    state["state"] = {i: {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in entry.items()}
                      for i, entry in sorted(state["state"].items())}
    return weights, state


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` of a whole state into an optimizer of sharded parameters: each rank's
    part of every per-parameter tensor (Adam's moments)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not isinstance(p, DTensor):
                continue
            entry = optimizer.state.get(p, {})
            for k, v in entry.items():
                if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.shape == p.shape:
                    entry[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)


def barrier() -> None:
    if active():
        dist.barrier()


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def start_ranks(nproc: int, command: list[str], grace_seconds: float) -> int:
    """Run ``command`` (``-m module args…``) as ``nproc`` ranks on this machine under torchrun, with this
    process as their agent; returns rank 0's exit code.

    torchrun passes a SIGTERM or SIGINT on to every rank (they agree on a step to stop after and rank 0
    checkpoints) and kills them TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds later: by default
    ``grace_seconds``, the server's grace for a stopping job, rather than torchrun's 30 s."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(int(grace_seconds)))
    try:
        torchrun(["--standalone", f"--nproc-per-node={nproc}", *command])
    except ChildFailedError as exc:
        failure = exc.failures.get(0) or next(iter(exc.failures.values()))
        return failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
    except SignalException as exc:
        return 128 + exc.sigval
    return 0
