"""flm.config: the data section of the parameter tree, profiles, and the DVC params lists."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from flm.config import (
    BPETokenizer,
    CharTokenizer,
    ConfigError,
    FilesSource,
    GPT2Tokenizer,
    HFSource,
    HFTokenizer,
    PackagedCorpusName,
    PackagedSource,
    Params,
    load_params,
    merge_overlay,
    params_from_dict,
)

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_laptop_default() -> None:
    params = load_params(REPO / "params.yaml", profile="laptop")
    assert params.profile == "laptop"
    assert params.data.source == PackagedSource(corpora=("bbc_news", "wikipedia"), val_fraction=0.05)
    assert params.data.tokenizer == CharTokenizer()
    assert params.data.packing.seq_len == 128
    smoke = load_params(REPO / "params.yaml", profile="smoke")
    assert smoke.data.tokenizer == BPETokenizer(vocab_size=4096, min_frequency=2)
    assert (smoke.data.source, smoke.data.packing) == (params.data.source, params.data.packing)
    assert (smoke.train.steps, smoke.distill.steps, smoke.ar.steps, smoke.mdlm.steps) == (300, 120, 300, 300)


def test_repo_params_paper_profiles() -> None:
    lm1b = load_params(REPO / "params.yaml", profile="lm1b").data
    assert lm1b.tokenizer == HFTokenizer(name="bert-base-uncased")
    assert lm1b.packing.seq_len == 128
    src = lm1b.source.resolved()
    assert (src.path, src.train_split, src.val_split, src.detokenize) == ("dvruette/lm1b", "train", "test", "lm1b")

    owt = load_params(REPO / "params.yaml", profile="owt").data
    assert owt.tokenizer == HFTokenizer(name="gpt2", add_pad=True)
    assert owt.packing.seq_len == 1024
    src = owt.source.resolved()
    assert (src.path, src.val_last_n, src.val_split) == ("Skylion007/openwebtext", 100_000, None)
    # the overlay replaced the packaged source whole: no packaged field survives
    assert isinstance(owt.source, HFSource)


def test_profile_defaults_to_the_files_own(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "owt"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_params(path).profile == "owt"
    assert load_params(path, profile="laptop").data.packing.seq_len == 128


def test_absent_sections_take_defaults() -> None:
    params = params_from_dict({})
    assert params == Params()
    assert params.data.tokenizer.kind == "bpe"


def test_typo_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data\.tokenizer\.bpe\.vocab_sise: Extra inputs are not permitted"):
        params_from_dict({"data": {"tokenizer": {"kind": "bpe", "vocab_sise": 100}}})
    with pytest.raises(ConfigError, match="modle"):
        params_from_dict({"modle": {}})


def test_unknown_source_kind_lists_known() -> None:
    with pytest.raises(ConfigError, match=r"data\.source.*'packaged', 'files', 'hf'"):
        params_from_dict({"data": {"source": {"kind": "s3"}}})


def test_unknown_packaged_corpus_lists_known() -> None:
    with pytest.raises(ConfigError, match=r"bbc_news.*wikipedia.*shakespeare"):
        params_from_dict({"data": {"source": {"kind": "packaged", "corpora": ["gutenberg"]}}})


def test_tokenizer_shorthands_and_unknown_one() -> None:
    assert params_from_dict({"data": {"tokenizer": "gpt2"}}).data.tokenizer == GPT2Tokenizer()
    hf = params_from_dict({"data": {"tokenizer": "hf:bert-base-uncased"}}).data.tokenizer
    assert hf == HFTokenizer(name="bert-base-uncased")
    with pytest.raises(ConfigError, match="unknown tokenizer 'sentencepiece'; known: bpe, char, gpt2, hf:NAME"):
        params_from_dict({"data": {"tokenizer": "sentencepiece"}})
    with pytest.raises(ConfigError, match="'bpe', 'gpt2', 'hf'"):
        params_from_dict({"data": {"tokenizer": {"kind": "wordpiece"}}})


def test_unknown_profile_lists_known() -> None:
    raw = {"profiles": {"tiny": {"data": {"packing": {"seq_len": 8}}}}}
    assert params_from_dict(raw, profile="tiny").data.packing.seq_len == 8
    with pytest.raises(ConfigError, match="unknown profile 'huge'; known profiles: laptop, tiny"):
        params_from_dict(raw, profile="huge")


def test_typo_in_an_inactive_profile_is_still_an_error() -> None:
    raw = {"profile": "laptop", "profiles": {"owt": {"data": {"packing": {"seq_lne": 1024}}}}}
    with pytest.raises(ConfigError, match=r"profile 'owt'.*seq_lne"):
        params_from_dict(raw)


def test_overlay_merges_but_kind_mappings_replace() -> None:
    base = {"data": {"tokenizer": {"kind": "bpe", "vocab_size": 512}, "packing": {"seq_len": 64, "dtype": "uint32"}}}
    overlay = {"data": {"tokenizer": {"kind": "gpt2"}, "packing": {"seq_len": 1024}}}
    merged = merge_overlay(base, overlay)
    assert merged["data"]["tokenizer"] == {"kind": "gpt2"}
    assert merged["data"]["packing"] == {"seq_len": 1024, "dtype": "uint32"}
    assert base["data"]["packing"]["seq_len"] == 64  # the base is not mutated


def test_params_are_frozen() -> None:
    params = Params()
    with pytest.raises(ValueError, match="frozen"):
        params.data.packing.seq_len = 7  # type: ignore[misc]


def test_hf_source_validation() -> None:
    with pytest.raises(ValueError, match="unknown preset 'c4'; known presets"):
        HFSource(preset="c4")
    with pytest.raises(ValueError, match=r"already sets \['text_field'\]"):
        HFSource(preset="lm1b", text_field="sentence")
    with pytest.raises(ValueError, match="either 'preset'"):
        HFSource()
    with pytest.raises(ValueError, match="exclude each other"):
        HFSource(path="x", val_split="test", val_last_n=5)
    with pytest.raises(ValueError, match="streaming"):
        HFSource(preset="openwebtext", streaming=True)
    wiki = HFSource(preset="wikitext103").resolved()
    assert (wiki.path, wiki.name, wiki.val_split) == ("Salesforce/wikitext", "wikitext-103-raw-v1", "validation")


def test_files_source_needs_paths() -> None:
    with pytest.raises(ValueError, match="paths"):
        FilesSource()  # type: ignore[call-arg]


def test_packaged_names_match_the_registry() -> None:
    from flm.data.packaged import PACKAGED

    assert set(typing.get_args(PackagedCorpusName)) == set(PACKAGED)


def _lookup(tree: dict, dotted: str) -> object:
    node: object = tree
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"params.yaml has no {dotted}"
        node = node[part]
    return node


def test_dvc_stages_declare_existing_params_for_every_profile() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    sections = {"corpus": "source", "tokenizer": "tokenizer", "pack": "packing"}
    for stage, section in sections.items():
        declared = stages[stage]["params"]
        expected = {"profile", f"data.{section}"} | {
            f"profiles.{p}.data.{section}" for p, overlay in params["profiles"].items() if section in overlay["data"]}
        assert set(declared) == expected, stage
        for key in declared:
            _lookup(params, key)
