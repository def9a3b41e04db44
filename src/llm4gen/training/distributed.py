"""What the trainer does differently across processes: the accelerate modes it supports, and whole tensors from
sharded ones.

Under DDP every process holds the CAM and UNet, their gradients and AdamW moments whole. Under FSDP (version 2) each
process holds one shard of every parameter, of its EMA and of its AdamW moments, as a ``DTensor``. Under DeepSpeed
ZeRO-2 each process holds the weights whole (in bf16 with bf16 mixed precision) but only its partition of the fp32
master weights and AdamW moments. A checkpoint gathers all of them whole (every process takes part, the main process
writes), and resuming cuts each process's part out of the whole tensors that every process reads. Checkpoints
therefore have one format in every mode: a run saved under FSDP or DeepSpeed resumes on one GPU, and the other way
round.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import TrainConfig

__all__ = ["check_distributed", "describe", "full_optimizer_state", "full_weights", "gather", "load_optimizer_state",
           "load_weights", "shard_like", "splits_state", "uses_deepspeed", "uses_fsdp"]


def uses_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def uses_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def splits_state(accelerator) -> bool:
    """Whether each process holds only part of the trained state (FSDP, DeepSpeed): then gathering it whole is a
    collective that every process joins."""
    return uses_fsdp(accelerator) or uses_deepspeed(accelerator)


def check_distributed(accelerator, cfg: TrainConfig) -> None:
    """Refuse the accelerate modes the trainer does not support (docs/training.md, configs/accelerate/): FSDP
    version 1 (its flat parameters hide the names the EMA and checkpoints use), DeepSpeed without ZeRO and with
    ZeRO-3; set DeepSpeed's batch and clipping from the config, as no DataLoader is prepared."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise NotImplementedError(
            "The trainer supports FSDP version 2 only (per-parameter shards that keep their names); set "
            "fsdp_version: 2 in the accelerate config, as configs/accelerate/fsdp.yaml does.")
    if kind == DistributedType.DEEPSPEED:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        if stage >= 3:
            raise NotImplementedError(
                "DeepSpeed ZeRO-3 shards the parameters, which llm4gen's EMA and checkpoints read whole under "
                "DeepSpeed; use ZeRO stage 2 (configs/accelerate/deepspeed_zero2.yaml), or FSDP "
                "(configs/accelerate/fsdp.yaml) to shard the parameters too.")
        if stage == 0:
            raise NotImplementedError(
                "DeepSpeed without ZeRO (zero_stage: 0) keeps its optimizer state in a form llm4gen's checkpoints do "
                "not read; use zero_stage: 2 (configs/accelerate/deepspeed_zero2.yaml) or DDP "
                "(configs/accelerate/multi_gpu.yaml).")
        if cfg.gradient_accumulation_steps != 1:
            raise NotImplementedError(
                "Under DeepSpeed, set gradient_accumulation_steps: 1 (DeepSpeed would scale the accumulated loss a "
                "second time); raise train_batch_size or the number of processes instead.")
        ds["gradient_clipping"] = cfg.max_grad_norm or 0.0  # DeepSpeed clips, accelerate's clip_grad_norm_ does not
        ds["train_micro_batch_size_per_gpu"] = cfg.train_batch_size
        ds["gradient_accumulation_steps"] = 1
        ds["train_batch_size"] = cfg.train_batch_size * accelerator.num_processes


def describe(accelerator) -> str:
    """How a run of several processes is spread, in a few words: ``"2 processes, DeepSpeed ZeRO-2"``."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        stage = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
        how = f"DeepSpeed ZeRO-{stage}"
    else:
        how = "FSDP" if kind == DistributedType.FSDP else "DDP"
    return f"{accelerator.num_processes} processes, {how}"


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def gather(t: torch.Tensor, keep: bool = True) -> torch.Tensor | None:
    """The whole tensor, on the CPU. For a sharded ``DTensor`` this is a collective: every process calls it, for
    the same tensors in the same order. ``keep=False`` (a process that only takes part, not the one that writes):
    None, and nothing is copied to the CPU."""
    if _is_dtensor(t):
        t = t.full_tensor()
    return t.detach().cpu() if keep else None


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


def _zero(optimizer):
    """DeepSpeed's ZeRO stage 1-2 optimizer behind accelerate's wrapper, or None."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if hasattr(inner, "single_partition_of_fp32_groups") else None


def _link_zero_state(zero) -> None:
    """Point every parameter at its fragment of the AdamW state. DeepSpeed (0.19) links them once, after the first
    parameter group's first step, when the other groups (the CAM's) have no state yet, and never again; relinking
    goes through its private flag, so a DeepSpeed that renamed it is refused rather than misread."""
    if not (hasattr(zero, "_hp_optimizer_states_linked") and hasattr(zero, "_lazy_init_hp_params_optimizer_state")):
        import deepspeed

        raise NotImplementedError(
            f"llm4gen reads the optimizer state of DeepSpeed 0.19's ZeRO optimizer; DeepSpeed {deepspeed.__version__} "
            "changed it. Install deepspeed 0.19, or train with configs/accelerate/fsdp.yaml or multi_gpu.yaml.")
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()


def full_weights(params: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor] | None:
    """The trained parameters whole, in fp32 where DeepSpeed keeps fp32 masters of bf16 weights (a collective under
    FSDP and DeepSpeed: every process calls it; only those that ``keep`` it get it, the others None)."""
    out = {}
    for k, p in params.items():
        if hasattr(p, "_hp_mapping"):  # a DeepSpeed ZeRO parameter: its fp32 master, summed from every partition
            from deepspeed.utils import safe_get_full_fp32_param

            t = gather(safe_get_full_fp32_param(p), keep)
        else:
            t = gather(p, keep)
        if keep:
            out[k] = t.contiguous()
    return out if keep else None


@torch.no_grad()
def load_weights(params: dict[str, torch.Tensor], whole: dict[str, torch.Tensor]) -> None:
    """Copy whole saved weights into the trained parameters: each process's shard under FSDP, the weights and this
    process's fp32 master partition under DeepSpeed."""
    for k, p in params.items():
        p.copy_(shard_like(whole[k], p))
        if hasattr(p, "_hp_mapping"):  # None where none of it is in this process's partition: DeepSpeed skips it
            from deepspeed.utils import safe_set_full_fp32_param

            safe_set_full_fp32_param(p, whole[k].float().to(p.device))


def full_optimizer_state(optimizer, groups: list[list[torch.Tensor]], keep: bool = True) -> dict[str, Any] | None:
    """The optimizer's state whole, in ``torch.optim.AdamW.state_dict()``'s integer-id format whatever the mode, so
    it loads in any mode: sharded state tensors are gathered (FSDP), and DeepSpeed's partitioned moments are
    assembled per parameter (both collectives; only the processes that ``keep`` it get it, the others None).
    ``groups``: the trained parameters of each optimizer group, in the order the optimizer was built with."""
    zero = _zero(optimizer)
    if zero is not None:
        return _full_zero_state(zero, groups, keep)
    sd = optimizer.state_dict()
    state = {pid: {k: gather(v, keep) if torch.is_tensor(v) else v for k, v in s.items()}
             for pid, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]} if keep else None


def _zero_keys(inner) -> list[str]:
    return sorted({k for s in inner.state.values() for k, v in s.items() if k != "step" and torch.is_tensor(v)})


def _full_zero_state(zero, groups: list[list[torch.Tensor]], keep: bool) -> dict[str, Any] | None:
    from deepspeed.utils import safe_get_full_optimizer_state

    inner = zero.optimizer  # torch AdamW over this process's flat fp32 partitions, one per group
    state: dict[int, dict[str, Any]] = {}
    param_groups, n = [], 0
    keys = _zero_keys(inner)
    if keys:
        _link_zero_state(zero)
    for g, (params, flat) in enumerate(zip(groups, zero.single_partition_of_fp32_groups)):
        step = inner.state.get(flat, {}).get("step")
        for i, p in enumerate(params):
            if step is not None:
                state[n + i] = {"step": step.detach().cpu().clone(),
                                **{k: gather(safe_get_full_optimizer_state(p, k), keep) for k in keys}}
        group = {k: v for k, v in inner.param_groups[g].items() if k != "params"}
        param_groups.append({**group, "params": list(range(n, n + len(params)))})
        n += len(params)
    return {"state": state, "param_groups": param_groups} if keep else None


def _load_zero_state(zero, groups: list[list[torch.Tensor]], sd: dict[str, Any]) -> None:
    from deepspeed.utils import safe_set_full_optimizer_state

    inner = zero.optimizer
    if len(sd["param_groups"]) != len(groups):
        raise ValueError(f"the optimizer state has {len(sd['param_groups'])} parameter groups, the optimizer has "
                         f"{len(groups)}")
    keys = sorted({k for s in sd["state"].values() for k in s if k != "step"})
    for g, (params, flat, saved) in enumerate(zip(groups, zero.single_partition_of_fp32_groups, sd["param_groups"])):
        if len(saved["params"]) != len(params):
            raise ValueError(f"parameter group {g} of the optimizer state has {len(saved['params'])} parameters, the "
                             f"optimizer's has {len(params)}")
        inner.param_groups[g].update({k: v for k, v in saved.items() if k != "params"})
        first = sd["state"].get(saved["params"][0]) if saved["params"] else None
        if first is not None:  # this process's partition of the group gets its state; the fragments follow
            inner.state[flat] = {"step": first["step"].clone(), **{k: torch.zeros_like(flat) for k in keys}}
    if keys:
        _link_zero_state(zero)
    for params, saved in zip(groups, sd["param_groups"]):
        for p, pid in zip(params, saved["params"]):
            for k in keys if pid in sd["state"] else ():
                safe_set_full_optimizer_state(p, sd["state"][pid][k].to(p.device), k)


def load_optimizer_state(optimizer, sd: dict[str, Any], groups: list[list[torch.Tensor]]) -> None:
    """Load a whole ``state_dict`` (as :func:`full_optimizer_state` writes it) into ``optimizer``, cutting each
    state tensor shaped like its parameter into that parameter's shard (FSDP) or partition (DeepSpeed)."""
    zero = _zero(optimizer)
    if zero is not None:
        return _load_zero_state(zero, groups, sd)
    params = _state_params(optimizer)
    state = {}
    for pid, s in sd["state"].items():
        if not 0 <= int(pid) < len(params):
            raise ValueError(f"the optimizer state has a parameter #{pid}, the optimizer has {len(params)}")
        p = params[int(pid)]
        state[pid] = {k: shard_like(v, p) if torch.is_tensor(v) and _is_dtensor(p) and v.shape == p.shape else v
                      for k, v in s.items()}
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
