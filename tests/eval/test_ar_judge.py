"""The pipeline's own AR model as the judge (``ar:CHECKPOINT_DIR``): the protocol by hand, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flm.config import EvalParams
from flm.data.tokenizer import load_tokenizer
from flm.eval.judge import JudgeError, load_judge
from flm.objectives.ar import ARObjective
from flm.train.checkpoint import load_backbone

from .helpers import tiny_data, tiny_model


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ar-judge")
    data = tiny_data(root)
    vocab = json.loads((data / "tokens" / "meta.json").read_text())["V"]
    tiny_model(root / "models" / "ar", "ar", vocab, seed=3)
    tiny_model(root / "models" / "flm", "flm", vocab, seed=4)
    return root


def test_nll_equals_the_hand_computation(project: Path) -> None:
    texts = ["The minister said on Tuesday that the plan would go ahead.", "Shares fell sharply."]
    judge = load_judge(f"ar:{project / 'models' / 'ar'}", tokenizer_dir=project / "data" / "tokenizer")
    nll, count = judge.nll(texts)

    tokenizer = load_tokenizer(project / "data" / "tokenizer")
    model = ARObjective(load_backbone(project / "models" / "ar")).eval()
    for i, text in enumerate(texts):
        ids = tokenizer.encode_batch([text])[0]
        seq = torch.tensor([[model.start_id, *ids, tokenizer.info.eos_id][:17]])  # n_ctx = L + 1 = 17
        with torch.no_grad():
            logp = model.logits(model.backbone.embed_ids(seq[:, :-1])).double().log_softmax(-1)
        expected = -logp[0].gather(-1, seq[0, 1:, None]).sum().item()
        assert count[i] == seq.shape[1] - 1
        assert nll[i] == pytest.approx(expected, rel=1e-5)
    assert count[0] == 16 and count[1] < 16  # the first text is cut at n_ctx, the second keeps its EOS


def test_reference_protocol_equals_the_hand_computation(project: Path) -> None:
    """``reference`` with ``L = 16``: the first 16 data tokens, no start token (the first token is context),
    one EOS after a text shorter than ``L``, every non-EOS token plus the first EOS counted."""
    texts = ["The minister said on Tuesday that the plan would go ahead.", "Shares fell sharply."]
    judge = load_judge(f"ar:{project / 'models' / 'ar'}", tokenizer_dir=project / "data" / "tokenizer")
    nll, count = judge.nll(texts, "reference", max_length=16)

    tokenizer = load_tokenizer(project / "data" / "tokenizer")
    model = ARObjective(load_backbone(project / "models" / "ar")).eval()
    for i, text in enumerate(texts):
        ids = tokenizer.encode_batch([text])[0]
        row = torch.tensor([ids[:16] + ([tokenizer.info.eos_id] if len(ids) < 16 else [])])
        with torch.no_grad():
            logp = model.logits(model.backbone.embed_ids(row[:, :-1])).double().log_softmax(-1)
        expected = -logp[0].gather(-1, row[0, 1:, None]).sum().item()
        assert count[i] == row.shape[1] - 1
        assert nll[i] == pytest.approx(expected, rel=1e-5)
    assert count[0] == 15 and count[1] < 15  # the first text is cut at L (15 scored), the second ends with EOS
    assert judge.nll(texts)[1].tolist() == [16, count[1] + 1]  # the document protocol also scores the first token


def test_errors_name_the_judge_and_the_problem(project: Path) -> None:
    tokenizer = project / "data" / "tokenizer"
    with pytest.raises(JudgeError, match="holds a flm model, not an AR model"):
        load_judge(f"ar:{project / 'models' / 'flm'}", tokenizer_dir=tokenizer)
    with pytest.raises(JudgeError, match="ar:"):
        load_judge(f"ar:{project / 'models' / 'missing'}", tokenizer_dir=tokenizer)
    assert EvalParams(judge="ar:models/ar").judge == "ar:models/ar"
    with pytest.raises(ValueError, match="unknown judge"):
        EvalParams(judge="ar:")
