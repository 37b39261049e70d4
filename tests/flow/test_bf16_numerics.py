"""bf16 stays inside the network: noise level, noisy state and sampler state are float32 under bf16 autocast.

CPU bf16 autocast (``torch.autocast("cpu", dtype=torch.bfloat16)``) casts matmuls the way CUDA's does,
so it shows what a bf16 training step or sampler would build on a GPU. Two failures are guarded:

* training: ``ξF`` as a bf16 matmul, and ``γ`` cast to its dtype, made ``h = (1-γ)ξF + γE[x]`` a bf16
  tensor whose ``γ`` took ~25 distinct values for the 4,097 nodes of ``τ ∈ [0.5, 1)``;
* sampling: ``γ``, ``τ`` and the state cast to ``z_0``'s dtype: with a bf16 ``z_0`` and 1,024 Euler
  steps on the GPT-2 vocabulary, 952 of the 1,023 updates had ``γ_{k+1} - γ_k = 0`` in bf16.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from flm.flow import TimeSchedule, flm_sample, flow_map_sample, projected_state, uniform_grid
from flm.model import DiT, DiTConfig
from flm.objectives import FLMObjective, FMLMDistillation
from flm.objectives.common import ProjectedSpace
from tests.conftest import gen

V, D, L = 97, 16, 8  # V > D: the noise factor is the Cholesky factor, a matmul like on GPT-2 scale
GPT2_VOCAB = 50258


def bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _dit(times: int, vocab: int = V) -> DiT:
    torch.manual_seed(0)
    dit = DiT(DiTConfig(vocab, D, 2, 2, cond_dim=D, n_times=times, time_freq_dim=16))
    with torch.no_grad():
        for p in dit.parameters():
            if not p.any():
                p.normal_(0.0, 0.3)
    return dit


def _inputs(module: torch.nn.Module, run: Callable[[], object]) -> list[tuple[torch.Tensor, ...]]:
    """The positional inputs of every call of ``module`` while ``run()`` runs."""
    seen: list[tuple[torch.Tensor, ...]] = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(tuple(a.detach() for a in args)))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_flm_training_state_is_float32_under_autocast() -> None:
    """The network input ``h`` of an FLM step is the float32 one, bit for bit, inside bf16 autocast."""
    objective = FLMObjective(_dit(1))
    x = torch.randint(0, V, (6, L), generator=gen(0))
    plain = _inputs(objective.backbone, lambda: objective(x, gen(1)))
    with bf16_autocast():
        mixed = _inputs(objective.backbone, lambda: objective(x, gen(1)))
    (h32, tau32), (h, tau) = plain[0], mixed[0]
    assert h.dtype == torch.float32 and tau.dtype == torch.float32
    assert torch.equal(h, h32) and torch.equal(tau, tau32)


def test_noise_level_keeps_every_table_node_under_autocast() -> None:
    """``γ`` recovered from the state for 4,097 times in ``[0.5, 1)`` equals float32 ``Γ(τ)``: all distinct."""
    schedule = TimeSchedule(V)
    embedding = _dit(1).embedding.detach()
    tau = torch.linspace(0.5, 1.0, 4098)[:-1]
    x = torch.zeros(tau.numel(), 1, dtype=torch.long)
    gamma32 = schedule.gamma(tau)
    with bf16_autocast():
        noise = ProjectedSpace(embedding).noise((tau.numel(), 1), gen(2))
        gamma = schedule.gamma(tau)
        h = projected_state(x, gamma, noise, embedding)
    assert noise.dtype == gamma.dtype == h.dtype == torch.float32
    # h = (1-γ) n + γ e per coordinate: γ = (h - n) / (e - n), read where |e - n| is largest
    e = embedding[0].double().expand_as(noise[:, 0])
    n = noise[:, 0].double()
    col = (e - n).abs().argmax(-1, keepdim=True)
    seen = ((h[:, 0].double() - n) / (e - n)).gather(-1, col).squeeze(-1)
    assert torch.allclose(seen, gamma32.double(), rtol=1e-5, atol=1e-6)
    assert torch.equal(gamma, gamma32)
    assert gamma32.unique().numel() == gamma.unique().numel() > 4000


def test_fmlm_distillation_states_are_float32_under_autocast() -> None:
    """Student and teacher inputs of a distillation step (shared noise, ``γ_s``) equal the float32 ones."""
    objective = FMLMDistillation.from_teacher(_dit(1))
    x = torch.randint(0, V, (8, L), generator=gen(0))

    def inputs() -> tuple[list, list]:
        student, teacher = [], []
        hs = objective.student.register_forward_pre_hook(lambda _, a: student.append(a[0].detach()))
        ht = objective.teacher.register_forward_pre_hook(lambda _, a: teacher.append(a[0].detach()))
        try:
            objective(x, gen(1))
        finally:
            hs.remove()
            ht.remove()
        return student, teacher

    student32, teacher32 = inputs()
    with bf16_autocast():
        student, teacher = inputs()
    assert student[0].dtype == teacher[0].dtype == torch.float32
    assert torch.equal(student[0], student32[0]) and torch.equal(teacher[0], teacher32[0])
    # the semigroup midpoint X_{s,u}(z_s) is state too: float32 (its δ comes from a bf16 network)
    assert all(h.dtype == torch.float32 for h in student)


class _Recorder:
    """A bf16 "network" on a projected state: ``p = softmax(z W)`` computed under autocast, states recorded."""

    def __init__(self, width: int, vocab: int) -> None:
        self.weight = torch.randn(vocab, width, generator=gen(5))
        self.states: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor, *times: torch.Tensor) -> torch.Tensor:
        self.states.append(z.clone())
        with bf16_autocast():
            p = F.linear(z, self.weight).softmax(-1)
        assert p.dtype == torch.bfloat16
        return p

    def changed_steps(self) -> int:
        """Updates ``k = 0..K-2`` after which the state the network sees has moved (``z_{k+1} ≠ z_k``)."""
        return sum(not torch.equal(a, b) for a, b in zip(self.states, self.states[1:], strict=False))


@pytest.fixture(scope="module")
def gpt2_schedule() -> TimeSchedule:
    return TimeSchedule(GPT2_VOCAB)


def test_flm_sampler_takes_every_gamma_step_with_a_bf16_network(gpt2_schedule: TimeSchedule) -> None:
    """1,024 Euler steps (``K - 1 = 1,023`` state updates) on the GPT-2 vocabulary's schedule, bf16 network.

    Counted: updates after which the float32 state moved. A bf16 ``z_0`` (what ``ξF`` was under autocast)
    is promoted; with the levels in bf16 only 71 of the 1,023 ``γ``-steps were non-zero.
    """
    steps, embedding = 1024, torch.randn(40, 8, generator=gen(3))
    space = ProjectedSpace(embedding)
    net = _Recorder(8, 40)
    with bf16_autocast():
        z0 = space.noise((2, 3), gen(4)).bfloat16()
        flm_sample(net, z0, uniform_grid(steps), gpt2_schedule, lift=space.lift)
    assert len(net.states) == steps
    assert all(z.dtype == torch.float32 for z in net.states)
    assert net.changed_steps() == steps - 1
    gamma_bf16 = gpt2_schedule.gamma(uniform_grid(steps)).bfloat16()
    assert int((gamma_bf16[1:-1] == gamma_bf16[:-2]).sum()) == 952  # the failure this guards against


@pytest.mark.parametrize("g", [0.0, 0.8])
def test_flow_map_sampler_keeps_a_float32_state_with_a_bf16_network(gpt2_schedule: TimeSchedule, g: float) -> None:
    """1,024 flow-map jumps (``K - 1`` state updates), deterministic and re-noised: every jump moves the state."""
    steps, embedding = 1024, torch.randn(40, 8, generator=gen(3))
    space = ProjectedSpace(embedding)
    net = _Recorder(8, 40)
    with bf16_autocast():
        z0 = space.noise((2, 3), gen(4)).bfloat16()
        noise = space.noise_fn((2, 3), gen(6))
        flow_map_sample(net, z0, uniform_grid(steps), gpt2_schedule, lift=space.lift, g=g,
                        noise=lambda: noise().bfloat16())
    assert len(net.states) == steps
    assert all(z.dtype == torch.float32 for z in net.states)
    assert net.changed_steps() == steps - 1


def test_lift_is_float32_under_autocast() -> None:
    """``pE`` (the sampler's update and the flow map's midpoint) is the float32 product inside autocast."""
    embedding = torch.randn(V, D, generator=gen(7))
    p = torch.randn(3, L, V, generator=gen(8)).softmax(-1).bfloat16()
    with bf16_autocast():
        lifted = ProjectedSpace(embedding).lift(p)
    assert lifted.dtype == torch.float32
    assert torch.equal(lifted, ProjectedSpace(embedding).lift(p))
