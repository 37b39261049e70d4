"""``compile`` covers what training runs: the backbone's ``features`` in every objective's training step.

The chunked-CE losses (FLM, FMLM, AR) and MDLM call ``backbone.features`` directly, never the
module's ``__call__``. A counting ``torch.compile`` backend sees every graph dynamo hands over; each
one the backbone produces holds its attention. The AR sampler's cached decoding stays eager (a new
shape at every position would be a new graph).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from flm.model import DiT, DiTConfig, compile_networks
from flm.objectives import ARObjective, FLMObjective, FMLMDistillation, MDLMObjective

V = 29


class CountingBackend:
    """Runs each captured graph as it is; records whether it holds the DiT's attention."""

    def __init__(self) -> None:
        self.graphs: list[bool] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable:
        self.graphs.append("scaled_dot_product_attention" in gm.code)
        return gm.forward


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _dit(vocab: int, **kw: object) -> DiT:
    net = DiT(DiTConfig(vocab, 32, 2, 2, cond_dim=16, time_freq_dim=32, **kw))  # type: ignore[arg-type]
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.3)
    return net


def _objectives() -> dict[str, Callable[[], nn.Module]]:
    return {
        "flm": lambda: FLMObjective(_dit(V), ce_chunk=24),
        "fmlm": lambda: FMLMDistillation.from_teacher(_dit(V), diag_fraction=0.5, boundary_fraction=0.25, ce_chunk=24),
        "ar": lambda: ARObjective(_dit(V + 1, n_times=0, causal=True), ce_chunk=24),
        "mdlm": lambda: MDLMObjective(_dit(V + 1)),
        "mdlm-chunked": lambda: MDLMObjective(_dit(V + 1), ce_chunk=24),
    }


@pytest.mark.parametrize("name", list(_objectives()))
def test_training_step_runs_the_compiled_features(name: str) -> None:
    torch.manual_seed(0)
    objective = _objectives()[name]().train()
    twin = copy.deepcopy(objective)
    backend = CountingBackend()
    compiled = compile_networks(objective, backend=backend)
    assert len(compiled) == (2 if name == "fmlm" else 1)  # FMLM: the student and the frozen teacher
    x = torch.randint(0, V, (4, 12), generator=torch.Generator().manual_seed(1))
    loss = objective(x, torch.Generator().manual_seed(2)).loss
    loss.backward()
    assert backend.graphs and all(backend.graphs)  # the backbone's features were compiled, and only they
    expected = twin(x, torch.Generator().manual_seed(2)).loss
    expected.backward()
    assert torch.allclose(loss, expected, atol=1e-6, rtol=0)
    trained = "student" if name == "fmlm" else "backbone"
    grads = [p.grad for p in getattr(objective, trained).parameters()]
    twin_grads = [p.grad for p in getattr(twin, trained).parameters()]
    assert all(g is not None for g in grads)
    assert all(torch.allclose(g, t, atol=1e-6) for g, t in zip(grads, twin_grads, strict=True))


def test_cached_ar_sampling_stays_eager() -> None:
    torch.manual_seed(0)
    objective = ARObjective(_dit(V + 1, n_times=0, causal=True)).eval()
    eager = objective.sample(3, 10, generator=torch.Generator().manual_seed(4))
    backend = CountingBackend()
    compile_networks(objective, backend=backend)
    assert torch.equal(objective.sample(3, 10, generator=torch.Generator().manual_seed(4)), eager)
    assert backend.graphs == []  # no graph per cached position
    objective(torch.randint(0, V, (2, 10)))  # the training loss still runs compiled
    assert len(backend.graphs) == 1


def test_every_compiled_dit_has_its_own_graph_budget() -> None:
    """Dynamo keeps at most 8 graphs per code object: nine DiTs of nine shapes must all still compile."""
    backend = CountingBackend()
    for i in range(9):
        net = DiT(DiTConfig(V, 8, 1, 2, cond_dim=8, time_freq_dim=8))
        net.compile(backend=backend)
        net.features(torch.randn(1, 2 + i, 8), torch.rand(1))
    assert len(backend.graphs) == 9
