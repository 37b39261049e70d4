"""Absorbing-state masked diffusion (MDLM, Sahoo et al. 2024): schedule, forward process, sampler.

Pure math on token ids and (log-)probabilities; MATH.md §6. Conventions: ``t = 0`` is data and
``t = 1`` is all-masked (the reverse of FLM's ``τ``); the mask token is id ``m = V``, one past
the clean vocabulary, and a denoiser returns log-probabilities over the ``V`` clean tokens only
(SUBS: the mask can never be predicted).

* schedule: ``α_t = 1 - t`` (the probability that a token is still clean at time ``t``);
* forward process: ``z_t,l = m`` with probability ``1 - α_t``, else ``x_l``, independently;
* NELBO weight: ``-α'_t / (1 - α_t) = 1 / t`` on masked positions; training times ``t ∈ [ε, 1]``;
* ancestral step ``t → s < t``: a masked position is revealed with probability
  ``(α_s - α_t) / (1 - α_t) = (t - s) / t`` to a draw from the denoiser, a clean one never changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from flm.flow.categorical import gumbel_max
from flm.flow.time_sampling import stratified_times, uniform_grid

__all__ = [
    "GATHER_ELEMENTS",
    "MaskedDenoiser",
    "alpha",
    "ancestral_step",
    "mask_tokens",
    "masked_sample",
    "nelbo_weight",
    "reveal_probability",
    "training_times",
]

GATHER_ELEMENTS = 1 << 26
"""Numbers of ``log_p`` (float32: 256 MiB) a sampler step copies at once to draw the revealed positions."""

MaskedDenoiser = Callable[[Tensor, Tensor], Tensor]
"""``log p_θ(x | z_t, t)``: ids ``(B, L)`` with masks, times ``(B,)`` → log-probabilities ``(B, L, V)``."""


def alpha(t: Tensor) -> Tensor:
    """Log-linear schedule ``α_t = 1 - t`` (MATH.md §6), elementwise, any shape."""
    return 1 - t


def nelbo_weight(t: Tensor) -> Tensor:
    """Continuous-time NELBO weight ``-α'_t / (1 - α_t) = 1 / t`` (MATH.md §6), elementwise."""
    return 1 / t


def reveal_probability(s: Tensor, t: Tensor) -> Tensor:
    """``P(z_s ≠ m | z_t = m) = (α_s - α_t) / (1 - α_t)`` for ``s < t`` (MATH.md §6), elementwise, float64."""
    s, t = s.to(torch.float64), t.to(torch.float64)
    return (alpha(s) - alpha(t)) / (1 - alpha(t))


def training_times(
    n: int, eps: float, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """``t = ε + (1 - ε) u`` with stratified ``u`` (``stratified_times``): ``(n,)`` float32 in ``[ε, 1)``.

    ``ε > 0`` keeps the weight ``1 / t`` finite (MDLM's ``sampling_eps = 1e-3``).
    """
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must lie in (0, 1), got {eps}")
    return eps + (1 - eps) * stratified_times(n, generator, device)


def mask_tokens(x: Tensor, t: Tensor, mask_id: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Forward process ``q(z_t | x)``: each token becomes ``m`` independently with probability ``1 - α_t``.

    Args:
        x: ``(B, L)`` clean ids.
        t: ``(B,)`` times.
        mask_id: ``m`` (``= V``).

    Returns:
        ``z_t`` ``(B, L)`` and the boolean mask ``z_t = m`` ``(B, L)``.
    """
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    masked = u < (1 - alpha(t.to(torch.float64)))[:, None]
    return torch.where(masked, torch.full_like(x, mask_id), x), masked


def ancestral_step(
    z_t: Tensor, log_p: Tensor, s: Tensor, t: Tensor, mask_id: int, generator: torch.Generator | None = None
) -> Tensor:
    """One draw of ``z_s ~ p_θ(z_s | z_t)`` for ``s < t`` (MATH.md §6).

    ``q(z_s | z_t = m, x) = (1 - α_s)/(1 - α_t) δ_m + (α_s - α_t)/(1 - α_t) δ_x`` with ``x`` replaced by
    the denoiser's distribution: a masked position is revealed with probability
    ``(α_s - α_t)/(1 - α_t)`` (a float64 uniform), then takes a float64 Gumbel-max draw from ``log_p``;
    an unmasked position is copied (SUBS). At ``s = 0`` every masked position is revealed.
    The revealed rows of ``log_p`` are gathered ``GATHER_ELEMENTS // V`` positions at a time (in
    position order, so the draws are those of one gather of all of them), which bounds the copy.

    Args:
        z_t: ``(B, L)`` ids, ``m`` at masked positions.
        log_p: ``(B, L, V)`` log-probabilities over clean tokens (read at masked positions only).
        s, t: ``(B,)`` times, ``0 <= s < t <= 1``.
        mask_id: ``m``.

    Returns:
        ``z_s`` ``(B, L)``.
    """
    masked = z_t == mask_id
    u = torch.rand(z_t.shape, generator=generator, device=z_t.device, dtype=torch.float64)
    reveal = masked & (u < reveal_probability(s, t)[:, None])
    z_s = z_t.clone()
    flat_z, flat_reveal, vocab = z_s.view(-1), reveal.view(-1), log_p.shape[-1]
    flat_p = log_p.reshape(-1, vocab)
    step = max(1, GATHER_ELEMENTS // vocab)
    for start in range(0, flat_reveal.numel(), step):  # the revealed rows of each block, in order
        rows = flat_reveal[start : start + step]
        flat_z[start : start + step][rows] = gumbel_max(flat_p[start : start + step][rows], generator)
    return z_s


@torch.no_grad()
def masked_sample(
    denoise: MaskedDenoiser, shape: tuple[int, int], steps: int, mask_id: int,
    generator: torch.Generator | None = None, device: torch.device | str | None = None,
) -> Tensor:
    """Ancestral sampling on ``t_k = 1 - k/K``, ``k = 0..K``, from all-masked ``z_1`` (``K`` network calls).

    For ``k = 0..K-1``: ``z_{t_{k+1}} = ancestral_step(z_{t_k}, denoise(z_{t_k}, t_k), t_{k+1}, t_k)``;
    the last step (``t_K = 0``) reveals every remaining mask. In expectation a fraction ``t_k``
    of the positions is still masked after ``k`` steps.

    Args:
        denoise: ``(z_t (B, L), t (B,)) -> log p (B, L, V)``.
        shape: ``(B, L)``.
        steps: ``K >= 1``.
        mask_id: ``m``.

    Returns:
        ``(B, L)`` clean ids in ``[0, V)``.
    """
    batch = shape[0]
    grid = uniform_grid(steps, device).flip(0)  # 1 = t_0 > t_1 > ... > t_K = 0, float64
    z = torch.full(shape, mask_id, dtype=torch.long, device=device)
    for k in range(steps):
        t, s = grid[k].expand(batch), grid[k + 1].expand(batch)
        z = ancestral_step(z, denoise(z, t.float()), s, t, mask_id, generator)
    return z
