"""A language whose exact denoiser we know: a first-order Markov chain (MATH.md §5).

For ``z_l = (1-γ) ε_l + γ e(x_l)`` the per-position log-likelihood is
``log p(z_l | x_l = v) = const + γ z_{l,v} / (1-γ)²``, so the posterior marginals
``P(x_l = v | z_γ)`` follow from one forward–backward pass over the chain (log space, float64).
That posterior is the optimal FLM denoiser: it checks schedule, interpolant and samplers with no
learning, and its expected cross entropy is the Bayes floor of the FLM loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from flm.flow import TimeSchedule, dense_state, stratified_times

__all__ = ["MarkovSource", "histogram_entropy"]


@dataclass(frozen=True)
class MarkovSource:
    """Initial law ``π`` ``(V,)`` and transition matrix ``T`` ``(V, V)`` (rows sum to 1), float64."""

    initial: Tensor
    transition: Tensor

    @classmethod
    def sparse(
        cls, vocab_size: int = 32, successors: int = 4, uniform_mix: float = 0.01, seed: int = 0
    ) -> MarkovSource:
        """Each token has ``successors`` random successors with Dirichlet(1, ..., 1) weights, mixed with
        ``uniform_mix`` of the uniform law (every sequence has finite likelihood); ``π`` is the
        stationary law, so sequences are stationary."""
        gen = torch.Generator().manual_seed(seed)
        trans = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
        for v in range(vocab_size):
            succ = torch.randperm(vocab_size, generator=gen)[:successors]
            expo = -torch.log(torch.rand(successors, generator=gen, dtype=torch.float64))
            trans[v, succ] = expo / expo.sum()  # normalized exponentials ~ Dirichlet(1, ..., 1)
        trans = (1 - uniform_mix) * trans + uniform_mix / vocab_size
        evals, evecs = torch.linalg.eig(trans.T)
        stat = evecs[:, evals.real.argmax()].real
        stat = (stat / stat.sum()).clamp_min(0)
        return cls(stat / stat.sum(), trans)

    @property
    def vocab_size(self) -> int:
        return self.initial.numel()

    @property
    def entropy_rate(self) -> float:
        """``H = Σ_u π(u) H(T_u)`` nats/token (stationary chain)."""
        row_h = -(self.transition * self.transition.log()).sum(-1)
        return float((self.initial * row_h).sum())

    def entropy_per_token(self, length: int) -> float:
        """Entropy of length-``L`` sequences per token, ``(H(π) + (L-1) H) / L``: the expected
        ``-log P(x)/L`` of real data, the reference line for samples' NLL per token."""
        h0 = float(-(self.initial * self.initial.log()).sum())
        return (h0 + (length - 1) * self.entropy_rate) / length

    def sample(self, n: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, length)`` token ids."""
        x = torch.empty(n, length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.initial.expand(n, -1), 1, generator=generator).squeeze(1)
        for pos in range(1, length):
            x[:, pos] = torch.multinomial(self.transition[x[:, pos - 1]], 1, generator=generator).squeeze(1)
        return x

    def nll(self, x: Tensor) -> Tensor:
        """``-log P(x)`` per sequence ``(n,)`` in nats, float64."""
        x = x.cpu()
        lp = self.initial.log()[x[:, 0]] + self.transition.log()[x[:, :-1], x[:, 1:]].sum(-1)
        return -lp

    def posterior(self, z: Tensor, gamma: Tensor | float) -> Tensor:
        """Exact ``P(x_l = v | z_γ)`` by forward–backward.

        Args:
            z: ``(B, L, V)`` dense noisy states.
            gamma: scalar or ``(B,)`` signal levels (clamped below 1).

        Returns:
            ``(B, L, V)`` float64 posterior marginals.
        """
        z = z.to(torch.float64)
        g = torch.as_tensor(gamma, dtype=torch.float64, device=z.device).clamp(0.0, 1 - 1e-6)
        g = g.reshape(-1, 1, 1) if g.dim() else g
        loglik = g * z / (1 - g) ** 2  # (B, L, V)
        log_t = self.transition.log().to(z.device)
        length = z.shape[1]
        fwd = [self.initial.log().to(z.device) + loglik[:, 0]]
        for pos in range(1, length):
            fwd.append(loglik[:, pos] + torch.logsumexp(fwd[-1][:, :, None] + log_t, dim=1))
        bwd = [torch.zeros_like(fwd[0])]
        for pos in range(length - 1, 0, -1):
            bwd.append(torch.logsumexp(log_t + (loglik[:, pos] + bwd[-1])[:, None, :], dim=2))
        bwd.reverse()
        logp = torch.stack(fwd, 1) + torch.stack(bwd, 1)
        return torch.softmax(logp, dim=-1)

    def denoiser(self, schedule: TimeSchedule):
        """The exact FLM denoiser ``p(z, τ) = P(x | z_{Γ(τ)})`` as a sampler callable."""
        return lambda z, tau: self.posterior(z, schedule.gamma(tau.to(torch.float64)))

    def bayes_floor(self, length: int, n: int = 4096, seed: int = 0) -> tuple[float, float]:
        """Expected ``-log P(x_l | z_γ)`` over ``τ ~ U[0,1]``: the FLM loss floor (mean, std. error)."""
        gen = torch.Generator().manual_seed(seed)
        schedule = TimeSchedule(self.vocab_size)
        x = self.sample(n, length, gen)
        tau = stratified_times(n, gen, dtype=torch.float64)
        gamma = schedule.gamma(tau)
        eps = torch.randn(n, length, self.vocab_size, generator=gen, dtype=torch.float64)
        post = self.posterior(dense_state(x, gamma, eps), gamma)
        per_seq = -post.gather(-1, x[..., None]).squeeze(-1).clamp_min(1e-300).log().mean(-1)
        return float(per_seq.mean()), float(per_seq.std() / math.sqrt(n))


def histogram_entropy(x: Tensor, vocab_size: int) -> Tensor:
    """Entropy (nats) of each sample's own token histogram: ``(n, L)`` → ``(n,)`` (MATH.md §4)."""
    counts = torch.zeros(x.shape[0], vocab_size, dtype=torch.float64).scatter_add_(
        1, x.cpu(), torch.ones(x.shape, dtype=torch.float64)
    )
    p = counts / counts.sum(-1, keepdim=True)
    return -(p * p.clamp_min(1e-300).log()).sum(-1)
