"""What the trainer does differently across processes: the accelerate modes it supports, and whole tensors from
sharded ones.

Under DDP and DeepSpeed ZeRO-2 every process holds the CAM and UNet whole. Under FSDP (version 2) each process holds
one shard of every parameter, of its EMA and of its AdamW moments, as a ``DTensor``; a checkpoint gathers them whole
(every process takes part, the main process writes), and resuming cuts each process's shard out of the whole tensors
that every process reads. Checkpoints therefore have one format in every mode: a run saved under FSDP resumes on one
GPU, and the other way round.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import TrainConfig

__all__ = ["check_distributed", "full_optimizer_state", "gather", "load_optimizer_state", "shard_like", "uses_fsdp"]


def uses_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def check_distributed(accelerator, cfg: TrainConfig) -> None:
    """Refuse the accelerate modes the trainer does not support (docs/training.md, configs/accelerate/): FSDP
    version 1 (its flat parameters hide the names the EMA and checkpoints use) and DeepSpeed ZeRO-3; set DeepSpeed's
    batch and clipping from the config, as no DataLoader is prepared."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise NotImplementedError(
            "The trainer supports FSDP version 2 only (per-parameter shards that keep their names); set "
            "fsdp_version: 2 in the accelerate config, as configs/accelerate/fsdp.yaml does.")
    if kind == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        if ds.get("zero_optimization", {}).get("stage", 0) >= 3:
            raise NotImplementedError(
                "DeepSpeed ZeRO-3 shards the parameters, which llm4gen's EMA and checkpoints read whole under "
                "DeepSpeed; use ZeRO stage 2 (configs/accelerate/deepspeed_zero2.yaml), or FSDP "
                "(configs/accelerate/fsdp.yaml) to shard the parameters too.")
        if cfg.gradient_accumulation_steps != 1:
            raise NotImplementedError(
                "Under DeepSpeed, set gradient_accumulation_steps: 1 (DeepSpeed would scale the accumulated loss a "
                "second time); raise train_batch_size or the number of processes instead.")
        ds["gradient_clipping"] = cfg.max_grad_norm or 0.0  # DeepSpeed clips, accelerate's clip_grad_norm_ does not
        ds["train_micro_batch_size_per_gpu"] = cfg.train_batch_size
        ds["gradient_accumulation_steps"] = 1
        ds["train_batch_size"] = cfg.train_batch_size * accelerator.num_processes


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def gather(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor, on the CPU. For a sharded ``DTensor`` this is a collective: every process calls it, for
    the same tensors in the same order."""
    if _is_dtensor(t):
        t = t.full_tensor()
    return t.detach().cpu()


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out as ``like`` is: this process's shard where ``like`` is a ``DTensor`` (cut locally, without
    communication, from the whole tensor that every process holds), else ``whole`` on ``like``'s device."""
    if _is_dtensor(like):
        from torch.distributed.tensor import distribute_tensor

        local = like.device_mesh.device_type
        return distribute_tensor(whole.to(local), like.device_mesh, like.placements, src_data_rank=None)
    return whole.to(like.device)


def _state_params(optimizer) -> list[torch.Tensor]:
    """The parameters in the order of ``optimizer.state_dict()``'s integer ids."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor gathered whole (a collective under FSDP): the same
    integer-id format as an unsharded optimizer's, so it loads in any mode."""
    sd = optimizer.state_dict()
    state = {pid: {k: gather(v) if torch.is_tensor(v) else v for k, v in s.items()} for pid, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def load_optimizer_state(optimizer, sd: dict[str, Any]) -> None:
    """Load a whole ``state_dict`` (as :func:`full_optimizer_state` writes it) into ``optimizer``, cutting each
    state tensor shaped like its parameter into that parameter's shard."""
    params = _state_params(optimizer)
    state = {}
    for pid, s in sd["state"].items():
        if not 0 <= int(pid) < len(params):
            raise ValueError(f"the optimizer state has a parameter #{pid}, the optimizer has {len(params)}")
        p = params[int(pid)]
        state[pid] = {k: shard_like(v, p) if torch.is_tensor(v) and _is_dtensor(p) and v.shape == p.shape else v
                      for k, v in s.items()}
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
