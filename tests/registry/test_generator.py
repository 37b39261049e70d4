"""TextGenerator: prefix-conditioned generation keeps the prefix; seeds, re-noising, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flm.objectives import FLMObjective
from flm.registry.generator import TextGenerator

PREFIX = [5, 17, 290, 3, 64]


@pytest.fixture(scope="module")
def generators(checkpoints: dict[str, Path], tokenizer_dir: Path) -> dict[str, TextGenerator]:
    return {kind: TextGenerator(path, tokenizer_dir) for kind, path in checkpoints.items()}


@pytest.mark.parametrize("kind", ["flm", "fmlm"])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_prefix_conditioned_generation_keeps_the_prefix(generators: dict, kind: str, steps: int) -> None:
    gen = generators[kind]
    ids = gen.sample_ids(6, steps, 16, seed=3, prefix=PREFIX)
    assert ids.shape == (6, 16)
    assert torch.equal(ids[:, :5], torch.tensor(PREFIX).expand(6, -1))
    assert len({tuple(row) for row in ids[:, 5:].tolist()}) > 1  # the rest is sampled, not copied
    if kind == "fmlm":
        renoised = gen.sample_ids(6, steps, 16, seed=3, prefix=PREFIX, renoise=True)
        assert torch.equal(renoised[:, :5], ids[:, :5])


@pytest.mark.parametrize("kind", ["flm", "fmlm"])
@pytest.mark.parametrize("steps", [1, 4])
def test_the_free_tokens_depend_on_the_prefix_through_the_clamped_state(
    generators: dict, kind: str, steps: int
) -> None:
    """Same seed (same ``z_0``), two prefixes: the free tokens differ only if the network saw the prefix.

    Overwriting the prefix ids at the end alone leaves the free tokens a function of the noise, equal
    for both prefixes; at one step only the clamped state ``z_0`` (not the clamped output) carries the prefix.
    """
    gen = generators[kind]
    other = [41, 8, 133, 250, 2]
    first = gen.sample_ids(64, steps, 16, seed=3, prefix=PREFIX)
    second = gen.sample_ids(64, steps, 16, seed=3, prefix=other)
    assert torch.equal(second[:, :5], torch.tensor(other).expand(64, -1))
    changed = int((first[:, 5:] != second[:, 5:]).any(dim=1).sum())
    # measured (random tiny checkpoints, seed 3): 6 (FLM) and 23 (FMLM) of 64 at one step, 32 and 50 at four
    assert changed >= 3, changed


@pytest.mark.parametrize("kind", ["flm", "fmlm"])
def test_text_prefix_starts_every_text(generators: dict, kind: str) -> None:
    prefix = "The government said"
    texts = generators[kind].generate(3, 4, 16, seed=0, prefix=prefix)
    assert len(texts) == 3 and all(text.startswith(prefix) for text in texts), texts
    assert len(set(texts)) == 3


@pytest.mark.parametrize("kind", ["flm", "fmlm"])
def test_same_seed_same_text_other_seed_other_text(generators: dict, kind: str) -> None:
    gen = generators[kind]
    first = gen.generate(2, 4, 16, seed=7, prefix="The")
    assert gen.generate(2, 4, 16, seed=7, prefix="The") == first
    assert gen.generate(2, 4, 16, seed=8, prefix="The") != first


def test_flm_without_prefix_is_the_objective_sampler(generators: dict) -> None:
    """No clamp: the generator's FLM path is ``FLMObjective.sample`` with the same generator."""
    gen = generators["flm"]
    expected = FLMObjective(gen.backbone).sample(4, 16, 8, generator=torch.Generator().manual_seed(11))
    assert torch.equal(gen.sample_ids(4, 8, 16, seed=11), expected)


def test_renoise_false_is_deterministic_and_renoise_changes_multistep_samples(generators: dict) -> None:
    """g = 0 never draws noise after ``z_0``; g > 0 does (K >= 2) and K = 1 has nothing to re-noise."""
    gen = generators["fmlm"]
    det = gen.sample_ids(8, 4, 16, seed=5, renoise=False)
    assert torch.equal(det, gen.sample_ids(8, 4, 16, seed=5))
    assert not torch.equal(gen.sample_ids(8, 4, 16, seed=5, renoise=True), det)
    assert not torch.equal(gen.sample_ids(8, 4, 16, seed=5, renoise=0.3), gen.sample_ids(8, 4, 16, seed=5, renoise=1.0))
    assert torch.equal(gen.sample_ids(8, 1, 16, seed=5, renoise=True), gen.sample_ids(8, 1, 16, seed=5))


def test_bad_requests_name_the_problem(generators: dict, checkpoints: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="more than length=4"):
        generators["fmlm"].sample_ids(1, 1, 4, prefix=PREFIX)
    with pytest.raises(ValueError, match=r"\[0, 320\)"):
        generators["fmlm"].sample_ids(1, 1, 8, prefix=[1, 320])
    with pytest.raises(ValueError, match="renoise applies to FMLM"):
        generators["flm"].sample_ids(1, 2, 8, renoise=True)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        TextGenerator(checkpoints["flm"]).sample_ids(1, 1, 8, prefix="The")
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        TextGenerator(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        TextGenerator(tmp_path)


def test_prefix_with_a_kind_that_cannot_clamp_is_refused(checkpoints: dict) -> None:
    gen = TextGenerator(checkpoints["flm"])
    gen.kind = "ar"  # a kind outside PREFIX_KINDS
    with pytest.raises(ValueError, match="prefix is not supported for ar"):
        gen.sample_ids(1, 1, 8, prefix=[1, 2])


def test_compiled_generator_writes_the_same_text(checkpoints: dict, tokenizer_dir: Path) -> None:
    """``compile=True`` (``flm generate --compile``): inductor-compiled network, same texts as eager."""
    eager = TextGenerator(checkpoints["fmlm"], tokenizer_dir)
    compiled = TextGenerator(checkpoints["fmlm"], tokenizer_dir, compile=True)
    for steps in (1, 4):
        expected = eager.generate(3, steps, 16, seed=7, prefix="The")
        assert compiled.generate(3, steps, 16, seed=7, prefix="The") == expected
