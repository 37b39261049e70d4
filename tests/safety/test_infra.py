"""The deployment recipes let no one in: Ray token authentication on every node, the dashboard never
on an open address without it, no local state or data in the image, a non-root image user, Ray's
local token file readable by its owner only, and the Hub judge read at a pinned commit."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flm.config import HUB_JUDGE_REVISIONS, ConfigError, EvalParams, load_params, params_from_dict
from flm.environment import ray_token, tool_home

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
IGNORED = {".state", ".venv", ".git", "data", "models", "reports", "metrics"}


def strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


# ---- Ray cluster launcher ---------------------------------------------------------------------------

def test_cluster_yaml_starts_every_node_with_token_auth_and_a_private_dashboard() -> None:
    config = yaml.safe_load((INFRA / "ray" / "cluster-gpu.yaml").read_text(encoding="utf-8"))
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [cmd for cmd in config[key] if "ray start" in cmd]
        assert starts, f"{key} starts no Ray"
        assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts), f"{key}: a `ray start` without token auth"
    head = " ".join(config["head_start_ray_commands"])
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head), "the dashboard must listen on loopback only"
    for text in strings(config):
        assert "0.0.0.0" not in text or "RAY_AUTH_MODE=token" in text, f"open address without token auth: {text}"
    assert "~/.ray/auth_token" in config["file_mounts"], "the token must reach every node"


# ---- KubeRay ----------------------------------------------------------------------------------------

def test_rayjob_turns_on_token_auth_for_head_and_workers() -> None:
    docs = [doc for doc in yaml.safe_load_all((INFRA / "ray" / "rayjob-kuberay.yaml").read_text(encoding="utf-8"))
            if doc]
    jobs = [doc for doc in docs if doc["kind"] == "RayJob"]
    assert jobs
    assert not [doc for doc in docs if doc["kind"] == "Ingress"]
    for job in jobs:
        cluster = job["spec"]["rayClusterSpec"]
        assert cluster.get("authOptions", {}).get("mode") == "token"
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for group in groups:
            for container in group["template"]["spec"]["containers"]:
                assert env_of(container).get("RAY_AUTH_MODE") == "token", container["name"]
            assert group["template"]["spec"].get("securityContext", {}).get("runAsNonRoot") is True
        head = cluster["headGroupSpec"]
        for text in strings(head["rayStartParams"]):
            assert text != "0.0.0.0" or cluster["authOptions"]["mode"] == "token"
        assert cluster.get("headServiceType", "ClusterIP") == "ClusterIP" and "LoadBalancer" not in str(head)


# ---- Docker image -----------------------------------------------------------------------------------

def test_dockerignore_at_the_build_context_keeps_state_and_data_out() -> None:
    build = re.search(r"docker build -f infra/docker/Dockerfile (?:-t \S+ )?(\S+)", DOCKERFILE.read_text())
    assert build is not None and build.group(1) == ".", "the documented build context is the repository root"
    entries = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert entries >= IGNORED, f"missing from .dockerignore: {sorted(IGNORED - entries)}"


def test_dockerfile_runs_as_a_non_root_user_after_the_last_copy() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    instructions = [(i, line.split(maxsplit=1)) for i, line in enumerate(lines) if line and not line.startswith("#")]
    copies = [i for i, words in instructions if words[0].upper() in {"COPY", "ADD"}]
    users = [(i, words[1]) for i, words in instructions if words[0].upper() == "USER"]
    assert users, "no USER in the Dockerfile: the image runs as root"
    last_user_line, user = users[-1]
    assert last_user_line > max(copies), "USER must come after the last COPY"
    assert user.split(":")[0] not in {"root", "0"}


TORCH_METADATA = INFRA / "docker" / "torch-wheel-METADATA"


def dockerfile_args() -> dict[str, str]:
    """``ARG NAME=default`` declarations of the Dockerfile."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    return dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]*)\"?$", text, flags=re.MULTILINE))


def cuda_majors_required(metadata: str) -> set[int]:
    """CUDA major versions named by a torch wheel's Linux requirements (``cuda-toolkit==13.0.3``,
    ``nvidia-cudnn-cu13==...``)."""
    majors = {int(m) for m in re.findall(r"^Requires-Dist: cuda-toolkit\S*==(\d+)\.", metadata, flags=re.MULTILINE)}
    majors |= {int(m) for m in re.findall(r"^Requires-Dist: nvidia-[a-z-]+-cu(\d+)\b", metadata, flags=re.MULTILINE)}
    return majors


def test_dockerfile_torch_pin_and_cuda_base_match_the_wheel() -> None:
    pins = re.findall(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert len(pins) == 1, f"pyproject.toml must pin torch exactly once, found {pins}"
    args, text = dockerfile_args(), DOCKERFILE.read_text(encoding="utf-8")
    assert args.get("TORCH_VERSION") == pins[0], f"Dockerfile torch {args.get('TORCH_VERSION')} != pyproject {pins[0]}"
    installs = re.findall(r"pip install [^\n]*\btorch==(\S+?)\"?\s*$", text, flags=re.MULTILINE)
    assert installs == ["${TORCH_VERSION}"], f"torch must be installed once, from the TORCH_VERSION pin: {installs}"
    assert "download.pytorch.org" not in text, "torch comes from PyPI, whose Linux wheel is the CUDA build"

    metadata = TORCH_METADATA.read_text(encoding="utf-8")
    assert re.search(rf"^Version: {re.escape(pins[0])}$", metadata, flags=re.MULTILINE), (
        "infra/docker/torch-wheel-METADATA is for another torch: refresh it with tools/wheel_metadata.py")
    wanted = cuda_majors_required(metadata)
    assert len(wanted) == 1, f"the wheel's CUDA requirements disagree or are missing: {wanted}"

    image = args.get("CUDA_IMAGE", "")
    base = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(?:cudnn-)?devel-ubuntu(\d+\.\d+)", image)
    assert base, f"CUDA_IMAGE {image!r} is not an nvidia/cuda devel image (flash-attn compiles against it)"
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", text, flags=re.MULTILINE)
    assert {int(base.group(1))} == wanted, f"base image CUDA {base.group(1)} != torch wheel's CUDA {wanted}"

    wheel_python = re.search(r"^# torch-\S+-cp(\d)(\d+)-", metadata, flags=re.MULTILINE)
    assert wheel_python and f"python{wheel_python.group(1)}.{wheel_python.group(2)}" in text, (
        "the image's Python differs from the wheel tag the metadata was read for")


def test_flash_attn_builds_for_one_architecture_with_bounded_jobs_or_from_a_wheel() -> None:
    args = dockerfile_args()
    assert args.get("FLASH_ATTN_CUDA_ARCHS") == "90", "build for Hopper (H100/H200) only unless told otherwise"
    assert 1 <= int(args["MAX_JOBS"]) <= 8 and 1 <= int(args["NVCC_THREADS"]) <= 4
    run = DOCKERFILE.read_text(encoding="utf-8")
    assert 'FLASH_ATTN_CUDA_ARCHS="$FLASH_ATTN_CUDA_ARCHS" MAX_JOBS="$MAX_JOBS"' in run
    assert 'pip install "$FLASH_ATTN_WHEEL"' in run, "a prebuilt wheel must be usable instead of the build"


# ---- the local Ray token ----------------------------------------------------------------------------

@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: a file is exactly as private as the mode it is created with."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


def test_ray_token_is_created_owner_only_and_ray_reads_it(tmp_path: Path, open_umask: None) -> None:
    home = tool_home(tmp_path / ".state")
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    value = token.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    assert tool_home(tmp_path / ".state") == home and token.read_text() == value  # kept, not regenerated
    assert [p.name for p in token.parent.iterdir()] == ["auth_token"]  # no draft left behind
    read = "from ray._raylet import AuthenticationTokenLoader as L; print(L.instance().get_raw_token(True))"
    done = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token"}, check=True)
    assert done.stdout.strip() == value


def test_a_world_readable_token_is_made_private_and_kept(tmp_path: Path, open_umask: None) -> None:
    (tmp_path / ".ray").mkdir()
    token = tmp_path / ".ray" / "auth_token"
    token.write_text("f" * 64)
    token.chmod(0o644)  # as Ray writes it itself
    assert ray_token(tmp_path) == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == "f" * 64


# ---- the Hub judge's revision -----------------------------------------------------------------------

def test_hub_judge_revision_is_pinned_or_required() -> None:
    pinned = HUB_JUDGE_REVISIONS["gpt2-large"]
    assert EvalParams(judge="hf:gpt2-large").judge_revision == pinned
    for profile in ("lm1b", "owt"):
        spec = load_params(ROOT / "params.yaml", profile=profile).eval
        assert spec.judge.startswith("hf:") and re.fullmatch(r"[0-9a-f]{40}", spec.judge_revision or "")
    assert EvalParams(judge="hf:org/lm", judge_revision="1" * 40).judge_revision == "1" * 40
    assert EvalParams().judge_revision is None
    for bad, words in [({"judge": "hf:org/lm"}, "judge_revision"),
                       ({"judge": "hf:org/lm", "judge_revision": "main"}, "judge_revision"),
                       ({"judge": "smollm2", "judge_revision": "1" * 40}, "judge_revision")]:
        raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
        raw.pop("profiles", None)
        raw["eval"] = {**raw.get("eval", {}), **bad}
        with pytest.raises(ConfigError, match=words) as err:
            params_from_dict(raw)
        assert "\n" not in str(err.value)


def _snapshot(repo: Path, commit: str, n_ctx: int, eos: str) -> None:
    """A commit of a tiny Hub causal LM in the Hugging Face cache layout (``snapshots/<commit>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<a>", "<b>", "the", "cat"])}, unk_token="the"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    out = repo / "snapshots" / commit
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token=eos, model_max_length=n_ctx).save_pretrained(out)
    config = GPT2Config(vocab_size=4, n_positions=n_ctx, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(out)


def test_hf_judge_reads_model_and_tokenizer_at_the_revision(tmp_path: Path, offline_hub: None) -> None:
    from flm.eval.judge import JudgeError, load_judge

    repo = tmp_path / "cache" / "hf" / "models--flm-test--tiny-judge"
    old, new = "a" * 40, "b" * 40
    _snapshot(repo, old, 64, "<a>")
    _snapshot(repo, new, 32, "<b>")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(new)  # the branch moved on: an unpinned judge would read `new`
    judge = load_judge("hf:flm-test/tiny-judge", tmp_path, revision=old)
    assert (judge.n_ctx, judge.eos_id) == (64, 0)  # old weights' context and old tokenizer's EOS
    judge = load_judge("hf:flm-test/tiny-judge", tmp_path, revision=new)
    assert (judge.n_ctx, judge.eos_id) == (32, 1)
    with pytest.raises(JudgeError, match=r"eval\.judge_revision"):
        load_judge("hf:flm-test/tiny-judge", tmp_path)
    with pytest.raises(JudgeError, match=f"revision {'c' * 40}"):
        load_judge("hf:flm-test/tiny-judge", tmp_path, revision="c" * 40)
