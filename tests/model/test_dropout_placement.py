"""Dropout where the reference DiT has it: on the attention and MLP block outputs only.

Not on the input embedding and not on the attention probabilities: in train mode with ``p > 0`` the
first block sees ``h`` itself and each attention output equals the eval-mode one; the dropped
tensors are exactly the attention projection's and the MLP's outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from flm.model import DiT, DiTConfig

P = 0.5


def _model() -> DiT:
    torch.manual_seed(0)
    model = DiT(DiTConfig(31, 32, 2, 2, cond_dim=16, n_times=1, dropout=P))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _inputs(model: DiT, x: torch.Tensor, tau: torch.Tensor, train: bool) -> dict[str, torch.Tensor]:
    """What the first block and every attention projection receive in one forward pass."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):  # a pre-hook that records its module's input and changes nothing
        return lambda _, args: seen.__setitem__(name, args[0])

    hooks = [model.blocks[0].register_forward_pre_hook(keep("block0"))]
    hooks += [block.proj.register_forward_pre_hook(keep(f"attn{i}")) for i, block in enumerate(model.blocks)]
    model.train(train)
    torch.manual_seed(1)
    model(x, tau)
    for hook in hooks:
        hook.remove()
    return seen


def test_input_embedding_and_attention_probabilities_are_not_dropped() -> None:
    model = _model()
    h, tau = torch.randn(2, 12, 32), torch.rand(2)
    train, evaluation = _inputs(model, h, tau, True), _inputs(model, h, tau, False)
    assert torch.equal(train["block0"], h)  # the embedding goes in undropped
    assert torch.equal(train["attn0"], evaluation["attn0"])  # same input, same attention: no dropped probabilities


def test_block_outputs_are_dropped() -> None:
    model = _model()
    dropped: list[tuple[torch.Tensor, torch.Tensor]] = []
    outputs: list[torch.Tensor] = []
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops == [block.drop for block in model.blocks]  # the only dropout modules
    for block in model.blocks:
        block.drop.register_forward_hook(lambda _, args, out: dropped.append((args[0], out)))
        block.proj.register_forward_hook(lambda _, args, out: outputs.append(out))
        block.mlp.register_forward_hook(lambda _, args, out: outputs.append(out))
    model.train()
    model(torch.randn(4, 16, 32), torch.rand(4))
    assert len(dropped) == len(outputs) == 2 * len(model.blocks)
    for (before, after), out in zip(dropped, outputs, strict=True):
        assert before is out  # the attention projection's, then the MLP's output
        zero = after == 0
        assert 0.4 < zero.float().mean() < 0.6
        assert torch.allclose(after[~zero], before[~zero] / (1 - P))
