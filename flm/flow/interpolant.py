"""The FLM interpolant and its projected (embedding-space) form (MATH.md §1, §3).

Dense reference path: ``z_γ = (1-γ) ε + γ e(x)`` with ``ε ∈ R^{L×V}``, seen by the network as
``z_γ E``. Projected path: the network only ever needs ``h = z_γ E = (1-γ) εE + γ E[x]``, and
``εE`` has the law of ``ξ F`` with ``ξ ~ N(0, I_k)`` and any ``F ∈ R^{k×d}`` with
``FᵀF = EᵀE`` (``F = R`` of the thin QR ``E = QR`` when ``V > d``, ``F = E`` itself otherwise).
Nothing ``V``-wide is allocated on the projected path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dense_state", "noise_factor", "project_noise", "projected_state", "sample_projected_noise"]


def _bcast(coef: Tensor, ref: Tensor) -> Tensor:
    """Reshape per-sequence coefficients ``(B,)`` to broadcast against ``ref`` ``(B, ...)``."""
    return coef.reshape(coef.shape + (1,) * (ref.dim() - coef.dim()))


def dense_state(x: Tensor, gamma: Tensor, eps: Tensor) -> Tensor:
    """Reference interpolant ``z_γ = (1-γ) ε + γ e(x)`` (MATH.md §1).

    Args:
        x: ``(B, L)`` token ids.
        gamma: ``(B,)`` signal levels.
        eps: ``(B, L, V)`` standard Gaussian noise.

    Returns:
        ``(B, L, V)`` noisy one-hot states (materializes ``V``-wide tensors: tests and benchmarks).
    """
    one_hot = F.one_hot(x, eps.shape[-1]).to(eps.dtype)
    g = _bcast(gamma.to(eps.dtype), eps)
    return (1 - g) * eps + g * one_hot


def noise_factor(embedding: Tensor) -> Tensor:
    """A factor ``F ∈ R^{k×d}`` with ``FᵀF = EᵀE``, ``k = min(V, d)`` (MATH.md §3).

    Args:
        embedding: ``(V, d)`` input embedding ``E`` (or ``[E_T  E_S]``, ``(V, d_T + d_S)``, when
            two networks must see the same noise). Differentiable.

    Returns:
        ``(k, d)``: ``E`` itself when ``V ≤ d`` (cheapest), else ``R`` of the thin QR ``E = QR``.
        QR runs in float32 at least, whatever the embedding's dtype.
    """
    vocab, dim = embedding.shape
    if vocab <= dim:
        return embedding
    work = embedding if embedding.dtype in (torch.float32, torch.float64) else embedding.float()
    return torch.linalg.qr(work).R.to(embedding.dtype)


def sample_projected_noise(
    factor: Tensor, shape: tuple[int, int], generator: torch.Generator | None = None
) -> Tensor:
    """``ξ F`` with ``ξ ~ N(0, I_k)`` per position: same law as ``εE`` (MATH.md §3).

    Args:
        factor: ``(k, d)`` from :func:`noise_factor`.
        shape: ``(B, L)``.
        generator: explicit RNG (on ``factor``'s device) for reproducibility.

    Returns:
        ``(B, L, d)`` projected noise.
    """
    xi = torch.randn(*shape, factor.shape[0], generator=generator, device=factor.device, dtype=factor.dtype)
    return xi @ factor


def project_noise(eps: Tensor, embedding: Tensor) -> Tensor:
    """``εE`` for an explicit dense ``ε`` ``(B, L, V)`` → ``(B, L, d)``: shares noise with the dense path."""
    return eps @ embedding


def projected_state(x: Tensor, gamma: Tensor, noise_h: Tensor, embedding: Tensor) -> Tensor:
    """``h = z_γ E = (1-γ) (εE) + γ E[x]`` without forming ``z_γ`` (MATH.md §3).

    Args:
        x: ``(B, L)`` token ids.
        gamma: ``(B,)`` signal levels.
        noise_h: ``(B, L, d)`` projected noise (``ξF`` or ``εE``).
        embedding: ``(V, d)`` input embedding ``E``.

    Returns:
        ``(B, L, d)`` network input.
    """
    g = _bcast(gamma.to(noise_h.dtype), noise_h)
    return (1 - g) * noise_h + g * F.embedding(x, embedding)
