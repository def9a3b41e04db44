"""Losses: the denoising loss (with Min-SNR weighting) and the entity-guided regularisation on cross-attention maps.

Entity-guided loss (our formulation of the paper's regulariser). For a caption with attribute -> entity pairs
(a, e) (e.g. "red" -> "cube"), let ``A_l[b, :, t]`` be the cross-attention probabilities of UNet layer ``l`` from every
spatial position to token ``t``, averaged over heads, and ``P_t = A_l[b, :, t] / sum_xy A_l[b, :, t]`` its spatial
distribution. The loss is the mean over layers (at or below a resolution cap) and pairs of the total-variation
distance between the attribute's and the entity's distributions:

    L_entity = mean_{l, (a, e)}  1/2 * sum_xy | P_a(x, y) - P_e(x, y) |        in [0, 1]

It is zero exactly when every attribute attends where its entity does, and pulls "red" towards the cube rather than
the ball. It is also zero when every token attends everywhere alike, which binds nothing; with
``entity_loss_negatives`` the loss adds a push term over token pairs (i, j) of mentions that name different colours
(``llm4gen.prompt_words.token_bindings``: "red" / "cube" against "blue" / "ball"):

    L_push = mean_{l, (i, j)}  1 - 1/2 * sum_xy | P_i(x, y) - P_j(x, y) |      in [0, 1]

which is zero only when the two objects' tokens attend to disjoint places. The training loss is
``L_diffusion + entity_loss_weight * (L_entity [+ L_push])``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .._compat import moved_attributes

__all__ = ["diffusion_loss", "entity_loss", "timestep_weights", "token_tv"]

# names that lived here before 0.2 (llm4gen._compat)
__getattr__ = moved_attributes(__name__, dict.fromkeys(
    ("AttentionStore", "install_attention_store", "cover_share", "grid_side"), "llm4gen.attention"))


def timestep_weights(
    num_timesteps: int,
    strategy: str = "none",
    multiplier: float = 1.0,
    portion: float = 0.25,
    begin_end: tuple[int, int] | list[int] | None = None,
) -> torch.Tensor:
    """The probability of drawing each training timestep (diffusers' ``timestep_bias_strategy`` in its SDXL scripts).

    ``none``: uniform. ``later`` / ``earlier``: the last / first ``round(portion * num_timesteps)`` timesteps (the
    noisiest / cleanest) are ``multiplier`` times as likely as the rest; ``range``: those in ``[begin, end)``. The loss
    is not reweighted: the biased draw changes which timesteps the model practises, on purpose.
    """
    weights = torch.ones(num_timesteps, dtype=torch.float64)
    if strategy == "none":
        return weights / num_timesteps
    if strategy in ("later", "earlier"):
        n = round(portion * num_timesteps)
        if not 0 < n < num_timesteps:
            raise ValueError(f"timestep_bias_portion {portion} of {num_timesteps} timesteps favours {n} of them; "
                             "choose a portion that leaves some on both sides.")
        chosen = slice(num_timesteps - n, None) if strategy == "later" else slice(0, n)
    elif strategy == "range":
        if begin_end is None or len(begin_end) != 2:
            raise ValueError("timestep_bias: range needs timestep_bias_range: [begin, end].")
        begin, end = int(begin_end[0]), int(begin_end[1])
        if not 0 <= begin < end <= num_timesteps:
            raise ValueError(f"timestep_bias_range [{begin}, {end}) must lie within the scheduler's "
                             f"{num_timesteps} timesteps: 0 <= begin < end <= {num_timesteps}.")
        chosen = slice(begin, end)
    else:
        raise ValueError(f"timestep_bias must be none, later, earlier or range, got {strategy!r}.")
    if multiplier <= 0:
        raise ValueError(f"timestep_bias_multiplier must be positive, got {multiplier}.")
    weights[chosen] *= multiplier
    return weights / weights.sum()


def diffusion_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    noise_scheduler: Any,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """MSE between prediction and target; with ``snr_gamma``, Min-SNR-gamma weighted per sample."""
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    else:
        weights = weights / snr
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
    return (per_sample * weights).mean()


def token_tv(m: torch.Tensor, pairs: list[tuple[int, int, int]], eps: float = 1e-8) -> torch.Tensor:
    """Total-variation distance ``[P]`` between the spatial distributions of token pairs ``(b, i, j)`` of one layer's
    attention ``m`` (``[B, HW, T]``); each token's column is normalised over positions first."""
    if not pairs:
        return torch.zeros(0, device=m.device)
    b_idx = torch.tensor([p[0] for p in pairs], device=m.device)
    i_idx = torch.tensor([p[1] for p in pairs], device=m.device)
    j_idx = torch.tensor([p[2] for p in pairs], device=m.device)
    pi, pj = m[b_idx, :, i_idx], m[b_idx, :, j_idx]  # [P, HW]
    pi = pi / pi.sum(-1, keepdim=True).clamp_min(eps)
    pj = pj / pj.sum(-1, keepdim=True).clamp_min(eps)
    return 0.5 * (pi - pj).abs().sum(-1)


def entity_loss(maps: list[torch.Tensor], pairs: list[list[tuple[int, int]]],
                negatives: list[list[tuple[int, int]]] | None = None, eps: float = 1e-8) -> torch.Tensor:
    """The entity-guided loss above. ``maps``: per layer ``[B, HW, T]`` attention probabilities; ``pairs[b]``:
    (attribute token, entity token) positions into ``T`` for sample ``b``. With ``negatives[b]`` (token pairs that
    name different objects) the loss adds, per layer, the mean of ``1 - TV`` over them, so it is no longer minimised
    by making every map alike. Returns 0 when there is nothing to bind."""
    device = maps[0].device if maps else torch.device("cpu")
    flat = [(b, a, e) for b, plist in enumerate(pairs) for a, e in plist]
    neg = [(b, x, y) for b, nlist in enumerate(negatives or []) for x, y in nlist]
    if not maps or not (flat or neg):
        return torch.zeros((), device=device)
    total = torch.zeros((), device=device)
    for m in maps:
        m = m.float()
        if flat:
            total = total + token_tv(m, flat, eps).mean()
        if neg:
            total = total + (1.0 - token_tv(m, neg, eps)).mean()
    return total / len(maps)
