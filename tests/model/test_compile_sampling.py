"""``DiT.compile_for_sampling``: one compiled graph serves every step of a fixed-step sampler.

A counting ``torch.compile`` backend sees each graph dynamo hands over: a graph break or a
recompilation between steps would show up as a second graph. The real backend (inductor) is run
once, in float64, and must give the same tokens as the eager network.
"""

from __future__ import annotations

import copy

import pytest
import torch

from flm.model import DiT, DiTConfig
from flm.objectives import FLMObjective, FMLMDistillation, MDLMObjective


class CountingBackend:
    """A ``torch.compile`` backend that runs the captured graph as it is and counts the graphs."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        self.graphs += 1
        return gm.forward


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _dit(times: int, vocab: int = 48) -> DiT:
    torch.manual_seed(0)
    net = DiT(DiTConfig(vocab, 32, 2, 2, cond_dim=32, n_times=times)).double()
    for p in net.parameters():  # away from the zero-initialized head, so the samples depend on the weights
        p.data.normal_(0.0, 0.3)
    return net.eval()


def _compiled(net: DiT) -> tuple[DiT, CountingBackend]:
    backend = CountingBackend()
    return copy.deepcopy(net).compile_for_sampling(backend=backend), backend


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(11)


def test_flm_euler_steps_share_one_graph() -> None:
    net = _dit(1)
    twin, backend = _compiled(net)
    eager = FLMObjective(net).sample(4, 16, 8, _gen())
    assert torch.equal(FLMObjective(twin).sample(4, 16, 8, _gen()), eager)
    assert backend.graphs == 1
    assert torch.equal(FLMObjective(twin).sample(4, 16, 32, _gen()), FLMObjective(net).sample(4, 16, 32, _gen()))
    assert backend.graphs == 1  # more steps: still the same graph
    FLMObjective(twin).sample(2, 16, 4, _gen())
    assert backend.graphs == 2  # another batch size compiles once more (dynamic=False)


@pytest.mark.parametrize("g", [0.0, 0.8])
def test_flow_map_steps_share_one_graph(g: float) -> None:
    teacher = _dit(1)
    fmlm = FMLMDistillation.from_teacher(teacher)
    for p in fmlm.student.time_embed_2.parameters():
        p.data.normal_(0.0, 0.3)
    twin, backend = _compiled(fmlm.student)
    compiled = copy.deepcopy(fmlm)
    compiled.student = twin
    for steps in (1, 2, 4):
        assert torch.equal(compiled.sample(4, 16, steps, _gen(), g=g), fmlm.sample(4, 16, steps, _gen(), g=g))
    assert backend.graphs == 1


def test_mdlm_steps_share_one_graph() -> None:
    net = _dit(1, vocab=49)
    twin, backend = _compiled(net)
    assert torch.equal(MDLMObjective(twin).sample(4, 16, 8, _gen()), MDLMObjective(net).sample(4, 16, 8, _gen()))
    assert backend.graphs == 1


def test_inductor_gives_the_eager_tokens() -> None:
    """The real compiler (C++ kernels on CPU), float64: the same tokens as eager, at 1 and 8 steps."""
    teacher = _dit(1)
    fmlm = FMLMDistillation.from_teacher(teacher)
    compiled = copy.deepcopy(fmlm)
    compiled.student.compile_for_sampling()
    for steps in (1, 8):
        assert torch.equal(compiled.sample(4, 16, steps, _gen()), fmlm.sample(4, 16, steps, _gen()))
