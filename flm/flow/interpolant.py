"""The FLM interpolant and its projected (embedding-space) form (MATH.md §1, §3).

Dense reference path: ``z_γ = (1-γ) ε + γ e(x)`` with ``ε ∈ R^{L×V}``, seen by the network as
``z_γ E``. Projected path: the network only ever needs ``h = z_γ E = (1-γ) εE + γ E[x]``, and
``εE`` has the law of ``ξ F`` with ``ξ ~ N(0, I_k)`` and any ``F ∈ R^{k×d}`` with
``FᵀF = EᵀE`` (``F = R`` from the Cholesky factor of the Gram matrix ``EᵀE = RᵀR`` when ``V > d``,
``F = E`` itself otherwise). Nothing ``V``-wide is allocated on the projected path.

Precision: the noise ``ξF``, the factor and the state ``h`` are built in float32 at least, with any
autocast region switched off (:func:`full_precision`): under bf16 autocast a matmul would return
bf16 and round ``γ`` with it. bf16 belongs inside the network only.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dense_state", "full_precision", "noise_factor", "project_noise", "projected_state", "sample_projected_noise",
    "working_dtype",
]

_RIDGE = 1e-12
"""Relative ridge of the Gram matrix's Cholesky: ``EᵀE + 1e-12 · mean(diag) · I`` (module docstring)."""


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype state math runs in: ``dtype`` if it is float32 or float64, else float32 (bf16, fp16)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def full_precision(device: torch.device) -> AbstractContextManager[None]:
    """A region where autocast is off on ``device`` (a no-op when autocast is not on there).

    Matmuls inside run in their inputs' dtype: the state math (noise, factor, state, lift) stays
    float32 inside a bf16-autocast training step or sampler.
    """
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


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

    For ``V > d``: ``F = R`` of the Cholesky factorization ``EᵀE = RᵀR`` of the ``d × d`` Gram
    matrix, in float64 (``R`` upper triangular with a positive diagonal: the ``R`` of the thin QR
    ``E = QR`` up to the signs of its rows, which do not change the law of ``ξR``). One ``(V, d)``
    product instead of a QR of ``E``. A ridge of ``1e-12`` times the mean diagonal makes a
    rank-deficient ``E`` (a singular Gram matrix) factorizable without a check on the host; its
    effect on ``FᵀF`` is far below float32 resolution.

    Args:
        embedding: ``(V, d)`` input embedding ``E`` (or ``[E_T  E_S]``, ``(V, d_T + d_S)``, when
            two networks must see the same noise). Differentiable.

    Returns:
        ``(k, d)``: ``E`` itself when ``V ≤ d`` (cheapest), else ``R`` in ``E``'s working dtype
        (float32 for a bf16 embedding).
    """
    vocab, dim = embedding.shape
    if vocab <= dim:
        return embedding
    with full_precision(embedding.device):
        work = embedding.to(torch.float64)
        gram = work.mT @ work
        ridge = (_RIDGE * gram.diagonal().mean()).clamp_min(torch.finfo(torch.float64).tiny)
        eye = torch.eye(dim, dtype=torch.float64, device=embedding.device)
        lower = torch.linalg.cholesky_ex(gram + ridge * eye).L
        return lower.mT.to(working_dtype(embedding.dtype))


def sample_projected_noise(
    factor: Tensor, shape: tuple[int, int], generator: torch.Generator | None = None
) -> Tensor:
    """``ξ F`` with ``ξ ~ N(0, I_k)`` per position: same law as ``εE`` (MATH.md §3).

    Args:
        factor: ``(k, d)`` from :func:`noise_factor`.
        shape: ``(B, L)``.
        generator: explicit RNG (on ``factor``'s device) for reproducibility.

    Returns:
        ``(B, L, d)`` projected noise in ``factor``'s working dtype (float32 for bf16), autocast off.
    """
    dtype = working_dtype(factor.dtype)
    xi = torch.randn(*shape, factor.shape[0], generator=generator, device=factor.device, dtype=dtype)
    with full_precision(factor.device):
        return xi @ factor.to(dtype)


def project_noise(eps: Tensor, embedding: Tensor) -> Tensor:
    """``εE`` for an explicit dense ``ε`` ``(B, L, V)`` → ``(B, L, d)``: shares noise with the dense path."""
    return eps @ embedding


def projected_state(x: Tensor, gamma: Tensor, noise_h: Tensor, embedding: Tensor) -> Tensor:
    """``h = z_γ E = (1-γ) (εE) + γ E[x]`` without forming ``z_γ`` (MATH.md §3).

    Built in float32 at least (float64 stays) with autocast off, whatever the dtypes of ``noise_h``
    and ``E``: ``γ`` is never rounded to bf16.

    Args:
        x: ``(B, L)`` token ids.
        gamma: ``(B,)`` signal levels.
        noise_h: ``(B, L, d)`` projected noise (``ξF`` or ``εE``).
        embedding: ``(V, d)`` input embedding ``E``.

    Returns:
        ``(B, L, d)`` network input, float32 (float64 if ``noise_h`` or ``E`` is float64).
    """
    dtype = torch.promote_types(working_dtype(noise_h.dtype), working_dtype(embedding.dtype))
    with full_precision(noise_h.device):
        g = _bcast(gamma.to(dtype), noise_h)
        return (1 - g) * noise_h.to(dtype) + g * F.embedding(x, embedding).to(dtype)
