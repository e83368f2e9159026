"""Every configuration mistake fails in one line, before any work: `error: <key>=<value>: <why>; allowed: ...`,
exit status 2, no traceback, nothing written. Most rows go through `check_command_line` in-process (what
the entry points call before Hydra starts); a few run the real entry points."""
from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys

import pytest
from conftest import ROOT, compose
from hydra.core.config_store import ConfigStore

from data.rules import ConfigError, check_config
from eval.cli import check_command_line
from models.config import ExportConfig
from trainer.config import register_configs
from trainer.validate import validate_run

CONF = str(ROOT / "conf")
MISSING = "/nonexistent/turnpack"

# (override(s), the key the error names). Defaults: conf/train.yaml with the tiny model and hotel data.
TRAIN_ROWS = [
    ("train.batch_size=-1", "train.batch_size"),  # once grew to 24 GB and was OOM-killed
    ("train.grad_accum=0", "train.grad_accum"),  # once a ZeroDivisionError
    ("train.log_every=0", "train.log_every"),  # once a ZeroDivisionError after training: the run was lost
    ("train.seq_len=0", "train.seq_len"),
    ("train.epochs=-1", "train.epochs"),  # once trained one step, silently
    ("train.max_steps=0", "train.max_steps"),
    ("train.precision=fp8", "train.precision"),
    ("train.save_every=-5", "train.save_every"),
    ("train.save_every_minutes=-1", "train.save_every_minutes"),
    ("train.loss_impl=fast", "train.loss_impl"),
    ("train.loss_chunk=0", "train.loss_chunk"),
    ("train.grad_ckpt_policy=some", "train.grad_ckpt_policy"),
    ("train.grad_ckpt_every=0", "train.grad_ckpt_every"),
    ("train.grad_ckpt_policy=selective", "train.grad_ckpt_policy"),  # with train.grad_ckpt=false: does nothing
    ("train.device=tpu", "train.device"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.sqe_len=5", "train.sqe_len"),  # a typo: Hydra's schema error, in our one line
    ("train.seq_len=abc", "train.seq_len"),
    ("optim.name=sgd", "optim.name"),
    ("optim.betas=[0.9]", "optim.betas"),  # once an IndexError
    ("optim.betas=[0.9,1.5]", "optim.betas"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=abc", "optim.lr"),
    ("optim.eps=0", "optim.eps"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("sched.name=step", "sched.name"),
    ("sched.warmup_ratio=2", "sched.warmup_ratio"),  # once a warm-up longer than the run, silently
    ("sched.warmup_steps=50 train.max_steps=10", "sched.warmup_steps"),
    ("peft.alpha=0", "peft.alpha"),  # once an adapter scaled to nothing, silently
    ("peft.r=0", "peft.r"),
    ("peft.r=100000", "peft.r"),  # larger than the tiny model's hidden size
    ("peft.dropout=1", "peft.dropout"),
    ("peft.method=adapterx", "peft.method"),
    ("peft.quant_type=int4", "peft.quant_type"),
    ("peft.num_virtual_tokens=0", "peft.num_virtual_tokens"),
    ("model.dtype=int8", "model.dtype"),
    ("model.template=vicuna", "model.template"),
    ("model.tool_format=xml", "model.tool_format"),
    ("model.attn_implementation=magic", "model.attn_implementation"),
    (f"model.gguf_file={MISSING}.gguf", "model.gguf_file"),
    (f"model.path={MISSING}", "model.path"),
    ("model=nope", "model"),
    ("data.overlong=bogus", "data.overlong"),
    ("data.multi_turn=both", "data.multi_turn"),
    ("data.format=yaml", "data.format"),
    (f"data.train={MISSING}.jsonl", "data.train"),
    ("data.train_on=[bot]", "data.train_on"),
    ("data.num_proc=0", "data.num_proc"),
    (f"data.tools=[{MISSING}.json]", "data.tools"),
    ("dist.engine=horovod", "dist.engine"),
    ("dist.zero_stage=4", "dist.zero_stage"),
    ("dist.timeout_minutes=0", "dist.timeout_minutes"),
    ("dist.backend=mpi", "dist.backend"),
    (f"dist.deepspeed_config={MISSING}.json", "dist.deepspeed_config"),
    ("logger.backend=tensorboard", "logger.backend"),
    ("logger.mode=sometimes", "logger.mode"),
    ("eval.split=val", "eval.split"),
    ("eval.subset=-1", "eval.subset"),
    ("preview.samples=0", "preview.samples"),
    ("perf.peak_tflops=0", "perf.peak_tflops"),
    ("sweep.direction=up", "sweep.direction"),
    (f"resume={MISSING}", "resume"),
    ("train.eval_every=10 data.dev=null", "train.eval_every"),  # asked for evaluations with nothing to evaluate
]
INFERENCE_ROWS = [  # launch/evaluate.py and launch/chat.py
    ("eval.batch_size=0", "eval.batch_size"),
    ("eval.top_p=0", "eval.top_p"),
    ("eval.temperature=0", "eval.temperature"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens"),
    ("eval.name=mmlu", "eval.name"),
    ("eval=mmlu", "eval"),
    (f"eval.predictions={MISSING}.jsonl", "eval.predictions"),
    (f"checkpoint={MISSING}", "checkpoint"),
    ("chat.max_calls=-1", "chat.max_calls"),
    (f"chat.script={MISSING}.txt", "chat.script"),
    ("serve.engine=tgi", "serve.engine"),  # and launch/serve.py
    ("serve.port=70000", "serve.port"),
    ("serve.dtype=int4", "serve.dtype"),
    ("serve.start_timeout=0", "serve.start_timeout"),
    ("serve.url=localhost:8000", "serve.url"),
]
EXPORT_ROWS = [  # {tmp}: an existing directory
    ("output_dir={tmp}/x", "checkpoint"),  # checkpoint=??? left unset
    ("checkpoint={tmp}", "output_dir"),
    (f"checkpoint={MISSING} output_dir={{tmp}}/x", "checkpoint"),
    ("checkpoint={tmp} output_dir={tmp}/x dtype=int8", "dtype"),
    ("checkpoint={tmp} output_dir={tmp}/x max_shard_size=big", "max_shard_size"),
]
# The combinations the engines and peft methods refused before this check existed keep their words.
REFUSALS = [
    ("dist=zero3 peft=qlora", "ZeRO-3 cannot partition bitsandbytes 4-bit"),
    ("peft=prefix_tuning train.grad_ckpt=true", "cannot be combined with train.grad_ckpt=true"),
    ("train.compile=true train.grad_ckpt=true", "does not combine with train.grad_ckpt=true"),
    ("dist=zero2 dist.offload_params=true", "needs dist.zero_stage=3"),
]


def checked(config: str, overrides: list[str], capsys) -> tuple[int | None, list[str]]:
    """Exit status and stderr lines of the entry points' check of `overrides` (None: it passed)."""
    register_configs()
    ConfigStore.instance().store(name="export_schema", node=ExportConfig)
    check = validate_run if config == "train" else (lambda cfg, _: check_config(cfg))
    try:
        check_command_line(CONF, config, overrides, check)
        code = None
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err.splitlines()


def assert_one_line(code: int | None, lines: list[str], key: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}="), lines
    assert "; allowed: " in lines[0]


@pytest.mark.parametrize("overrides,key", TRAIN_ROWS)
def test_bad_training_value_fails_in_one_line(overrides, key, tmp_path, capsys):
    code, lines = checked("train", [*overrides.split(), f"output_dir={tmp_path / 'run'}"], capsys)
    assert_one_line(code, lines, key)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("overrides,key", INFERENCE_ROWS)
def test_bad_inference_value_fails_in_one_line(overrides, key, tmp_path, capsys):
    code, lines = checked("inference", [*overrides.split(), f"output_dir={tmp_path / 'eval'}"], capsys)
    assert_one_line(code, lines, key)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("overrides,key", EXPORT_ROWS)
def test_bad_export_value_fails_in_one_line(overrides, key, tmp_path, capsys):
    code, lines = checked("export", overrides.format(tmp=tmp_path).split(), capsys)
    assert_one_line(code, lines, key)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("overrides,words", REFUSALS)
def test_combinations_that_cannot_train_are_refused_up_front(overrides, words, capsys):
    code, lines = checked("train", overrides.split(), capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]


def test_the_defaults_and_the_presets_pass(capsys):
    for overrides in ([], ["model=smollm2"], ["dist=zero2", "peft=qlora"], ["peft=prompt_tuning"],
                      ["data=alpaca", f"data.train={ROOT / 'data/assets/hotel/train.jsonl'}"]):
        assert checked("train", overrides, capsys) == (None, []), overrides
    assert checked("inference", ["eval=truthfulqa"], capsys) == (None, [])


def test_warnings_name_what_may_be_meant():
    assert validate_run(compose("train.max_steps=3", "train.epochs=2"), ["train.max_steps=3", "train.epochs=2"]) \
        == ["train.max_steps=3 sets the run's length; train.epochs=2 is unused"]
    assert validate_run(compose("sched.warmup_ratio=1")) \
        == ["sched.warmup_ratio=1: the whole run is warm-up; the learning rate peaks at the last step"]
    # The tiny preset's eval_every=20 without a dev split is a warning; on the command line, an error (above).
    assert validate_run(compose("data.dev=null")) \
        == ["train.eval_every=20 does nothing: there is no dev split (data.dev is unset)"]


def test_a_model_directory_without_a_model_says_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.path=.*: holds no model \(looked for config\.json there\)"):
        validate_run(compose(f"model.path={tmp_path}"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 64}))
    with pytest.raises(FileNotFoundError, match=r"has no tokenizer \(looked for tokenizer\.json, tokenizer_config"):
        validate_run(compose(f"model.path={tmp_path}"))


@pytest.mark.parametrize("name,content,overrides,why", [
    ("train.jsonl", "\n", [], "the file is empty (no dialogues)"),
    ("qa.csv", "title,question,reply,is_best\nt,q,a,0\n", ["data=legal_csv", "data.filter_column=is_best"],
     "no row passes data.filter_column=is_best"),
])
def test_a_data_file_with_no_dialogues_is_named(name, content, overrides, why, tmp_path, capsys):
    from trainer.run import run_training

    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        run_training(compose(*overrides, f"data.train={path}", "data.dev=null", f"data.cache_dir={tmp_path / 'cache'}",
                             f"output_dir={tmp_path / 'run'}", "train.max_steps=1"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"error: {path}: {why}" in err and "corresponds to no data" not in err
    assert not (tmp_path / "run").exists()


def test_no_negative_step_size_reaches_the_sampler():
    from data.sampling import StepSampler

    with pytest.raises(ValueError, match="must each be at least 1"):
        StepSampler(100, -1, 1)


def test_the_bitsandbytes_hub_probe_is_quiet_and_other_warnings_pass(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "launch"))
    importlib.import_module("_bootstrap")  # installs the filter

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure ...",
                       "Set trust_remote_code=True")
        logger.warning("a real warning")
    finally:
        logger.removeHandler(handler)
    assert seen == ["a real warning"]


def test_allowed_sets_match_what_the_code_accepts():
    from models.adapters import PEFT_METHODS
    from models.config import PEFT_METHOD_NAMES
    from trainer.config import OPTIMIZER_NAMES
    from trainer.optim import OPTIMIZERS

    assert tuple(PEFT_METHODS) == PEFT_METHOD_NAMES and tuple(OPTIMIZERS) == OPTIMIZER_NAMES


# The real entry points: exit status 2, one line, no traceback, nothing written, and the check runs
# before torch is imported (so before any model, data or process group).
ENTRY_POINTS = [
    ("train.py", ["train.batch_size=-1"], "train.batch_size"),
    ("train.py", ["optim.lr=abc"], "optim.lr"),
    ("evaluate.py", ["eval.batch_size=0"], "eval.batch_size"),
    ("chat.py", ["chat.max_calls=-1"], "chat.max_calls"),
    ("export.py", ["dtype=int8"], "dtype"),
    ("serve.py", ["serve.port=0"], "serve.port"),
]


@pytest.mark.parametrize("script,overrides,key", ENTRY_POINTS)
def test_entry_point_fails_in_one_line_before_importing_torch(script, overrides, key, tmp_path):
    out = tmp_path / "out"
    extra = [f"checkpoint={tmp_path}"] if script == "export.py" else []
    run_as_main = "; ".join([  # `python launch/<script> ...`, saying at exit whether torch was imported
        "import atexit, os, runpy, sys", "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules))",
        "sys.argv = sys.argv[1:]", "sys.path.insert(0, os.path.dirname(sys.argv[0]))",
        "runpy.run_path(sys.argv[0], run_name='__main__')"])
    run = subprocess.run([sys.executable, "-c", run_as_main, str(ROOT / "launch" / script), *extra, *overrides,
                          f"output_dir={out}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, HYDRA_FULL_ERROR="0"))
    assert run.returncode == 2, run.stderr[-2000:]
    assert_one_line(2, run.stderr.splitlines(), key)
    assert "Traceback" not in run.stderr and run.stdout.strip() == "torch imported: False"
    assert not list(tmp_path.iterdir())  # no output dir, no Hydra run dir, no log


def test_warmup_longer_than_a_run_measured_in_epochs_fails_before_the_model_loads(hotel_overrides, monkeypatch):
    """The run's length in steps is known once the data is packed: the check comes then, before the model."""
    import trainer.loop

    monkeypatch.setattr(trainer.loop, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    cfg = compose(*hotel_overrides, "train.max_steps=-1", "train.epochs=1", "sched.warmup_steps=1000")
    with pytest.raises(ConfigError, match=r"^sched\.warmup_steps=1000: longer than the run \(\d+ steps: train\.epochs=1 "
                       r"× \d+ steps per epoch\); allowed: 0 to \d+$"):
        trainer.loop.Trainer(cfg)
