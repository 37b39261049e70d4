"""Masked diffusion math (MATH.md §6): schedule, forward process, ancestral sampler, Gumbel-max."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from flm.flow import (
    alpha,
    ancestral_step,
    gumbel_max,
    mask_tokens,
    masked_sample,
    nelbo_weight,
    reveal_probability,
    training_times,
)

V = 11  # clean vocabulary; the mask is id V


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def binomial_tolerance(p: float, n: int, sigmas: float = 5.0) -> float:
    return sigmas * math.sqrt(max(p * (1 - p), 1e-12) / n)


def test_schedule_endpoints_weight_and_reveal_probability() -> None:
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    assert torch.equal(alpha(t), torch.tensor([1.0, 0.75, 0.0], dtype=torch.float64))
    assert torch.allclose(nelbo_weight(t[1:]), torch.tensor([4.0, 1.0], dtype=torch.float64))
    s, t = torch.tensor([0.0, 0.2, 0.5]), torch.tensor([0.4, 0.8, 0.5 + 1e-6])
    assert torch.allclose(reveal_probability(s, t), (t.double() - s.double()) / t.double())
    assert reveal_probability(s, t)[0] == 1.0  # s = 0: everything is revealed


def test_training_times_are_stratified_on_eps_to_one() -> None:
    t = training_times(64, eps=1e-3, generator=gen())
    assert t.dtype == torch.float32 and t.min() >= 1e-3 and t.max() < 1
    u = (t.double() - 1e-3) / (1 - 1e-3)
    assert sorted((u * 64).floor().long().tolist()) == list(range(64))  # one per stratum
    with pytest.raises(ValueError, match="eps"):
        training_times(4, eps=0.0)


@pytest.mark.parametrize("t", [0.0, 0.1, 0.37, 0.8, 1.0])
def test_masked_fraction_of_the_forward_process_is_one_minus_alpha(t: float) -> None:
    x = torch.randint(0, V, (4, 25_000), generator=gen(1))
    z, masked = mask_tokens(x, torch.full((4,), t), V, gen(2))
    assert torch.equal(masked, z == V) and torch.equal(z[~masked], x[~masked])
    frac, p = masked.double().mean().item(), 1 - (1 - t)
    assert abs(frac - p) <= binomial_tolerance(p, x.numel()), (frac, p)


def test_per_row_times_mask_each_row_at_its_own_rate() -> None:
    t = torch.tensor([0.05, 0.5, 0.95])
    _, masked = mask_tokens(torch.zeros(3, 40_000, dtype=torch.long), t, V, gen(3))
    for row, p in zip(masked.double().mean(1).tolist(), t.tolist(), strict=True):
        assert abs(row - p) <= binomial_tolerance(p, 40_000)


def oracle(x: Tensor) -> tuple[list[float], Callable[[Tensor, Tensor], Tensor]]:
    """A perfect denoiser (log one-hot of the data) that records the masked fraction it is shown."""
    seen: list[float] = []
    log_p = torch.log(F.one_hot(x, V).double())

    def denoise(z: Tensor, t: Tensor) -> Tensor:
        assert z.shape == x.shape and t.shape == (x.shape[0],)
        seen.append((z == V).double().mean().item())
        return log_p

    return seen, denoise


@pytest.mark.parametrize("steps", [1, 2, 5, 16, 64])
def test_an_oracle_denoiser_makes_the_sampler_return_the_data(steps: int) -> None:
    x = torch.randint(0, V, (6, 40), generator=gen(4))
    seen, denoise = oracle(x)
    out = masked_sample(denoise, tuple(x.shape), steps, V, gen(5))
    assert torch.equal(out, x)
    assert len(seen) == steps and seen[0] == 1.0  # K network calls, starting all-masked


def test_still_masked_fraction_after_k_steps_is_t_k() -> None:
    steps = 8
    x = torch.randint(0, V, (64, 512), generator=gen(6))
    seen, denoise = oracle(x)
    masked_sample(denoise, tuple(x.shape), steps, V, gen(7))
    for k, frac in enumerate(seen):  # call k sees the state after k steps, at t_k = 1 - k/K
        t_k = 1 - k / steps
        assert abs(frac - t_k) <= binomial_tolerance(t_k, x.numel()), (k, frac, t_k)


def test_ancestral_step_keeps_clean_tokens_and_never_emits_the_mask_as_a_token() -> None:
    g = gen(8)
    z_t = torch.randint(0, V + 1, (16, 300), generator=g)
    z_t[:, ::3] = V
    log_p = torch.randn(16, 300, V, generator=g, dtype=torch.float64).log_softmax(-1)
    t, s = torch.full((16,), 0.6), torch.full((16,), 0.45)
    z_s = ancestral_step(z_t, log_p, s, t, V, g)
    clean = z_t != V
    assert torch.equal(z_s[clean], z_t[clean])
    assert z_s.min() >= 0 and z_s.max() <= V
    revealed = (z_t == V) & (z_s != V)
    p = 0.15 / 0.6
    frac = revealed.sum().item() / (z_t == V).sum().item()
    assert abs(frac - p) <= binomial_tolerance(p, int((z_t == V).sum())), frac
    final = ancestral_step(z_t, log_p, torch.zeros(16), t, V, g)
    assert final.max() < V and torch.equal(final[clean], z_t[clean])


def test_gumbel_max_draws_follow_the_softmax_and_skip_minus_infinity() -> None:
    logits = torch.tensor([0.3, -1.2, float("-inf"), 1.0])
    draws = gumbel_max(logits.expand(200_000, 4), gen(9))
    counts = torch.bincount(draws, minlength=4).double() / 200_000
    probs = logits.double().softmax(-1)
    assert counts[2] == 0
    for c, p in zip(counts.tolist(), probs.tolist(), strict=True):
        assert abs(c - p) <= binomial_tolerance(p, 200_000)
    assert torch.equal(gumbel_max(logits.expand(5, 4), gen(1)), gumbel_max(logits.double().expand(5, 4), gen(1)))
