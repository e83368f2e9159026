"""The loop: accumulation equivalence, exact resume, loadable outputs."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import assert_resume_matches, compose, reload_adapter_and_compare
from eval.turns import turn_text
from trainer.loop import Trainer


def trainable(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_grad_accumulation_4x1_equals_1x4(hotel_overrides):
    common = hotel_overrides + ["train.max_steps=1", "peft.dropout=0", "sched.warmup_ratio=0"]
    runs = [Trainer(compose(*common, "train.batch_size=4", "train.grad_accum=1")),
            Trainer(compose(*common, "train.batch_size=1", "train.grad_accum=4"))]
    assert [len(r.sampler.micro_batches(0)) for r in runs] == [1, 4]
    grads, weights = [], []
    for run in runs:
        before = trainable(run)
        loss_sum, _ = run.forward_backward(run.micro_batches(run.train_split, run.sampler.micro_batches(0)))
        grads.append({n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad})
        run.optimizer_step(loss_sum)
        weights.append(trainable(run))
        assert any(not torch.equal(before[n], weights[-1][n]) for n in before)
    for name in grads[0]:  # token-weighted: the same gradient, not a mean of per-micro-batch means
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-8)
        # Adam divides by |g|, so near-zero gradients amplify rounding: compare to 1% of one lr step
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=2e-5)


def test_resume_is_bit_exact(hotel_overrides, tmp_path):
    common = hotel_overrides + ["train.max_steps=8", "train.save_every=4", "peft.dropout=0.1"]
    straight = Trainer(compose(*common))
    straight.train()
    assert_resume_matches(common, tmp_path)


def test_saved_adapter_reloads_and_reproduces_logits(hotel_overrides, tmp_path):
    trainer = Trainer(compose(*hotel_overrides, "train.max_steps=3"))
    trainer.train()
    out = tmp_path / "run"
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= events[0].keys()
    assert any("eval/loss" in e for e in events)
    assert (out / "config.yaml").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_3"]  # no temporary dirs left
    reload_adapter_and_compare(trainer, out / "final")


def test_full_fine_tuning_saves_a_standard_model(hotel_overrides, tmp_path):
    trainer = Trainer(compose(*hotel_overrides, "peft=none", "train.max_steps=2", "optim.lr=1e-3"))
    trainer.train()
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(final).eval()
    trained = trainer.model.eval()
    ids = torch.tensor([[1, 20, 30, 40, 2]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trained(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_layers_train_like_eager_without_recompiling(hotel_overrides, tmp_path, capsys):
    """train.compile=true: rows padded to seq_len, so batches of different content and length compile once;
    the losses are the eager run's."""
    common = hotel_overrides + ["train.max_steps=3", "train.batch_size=1", "peft.dropout=0"]  # rows of 512

    def losses(*overrides: str) -> list[float]:
        trainer = Trainer(compose(*common, *overrides))
        trainer.train()
        return [e["train/loss"] for e in map(json.loads, (trainer.output_dir / "metrics.jsonl").read_text().splitlines())
                if "train/loss" in e]

    compiled = Trainer(compose(*common, "train.compile=true"))
    batches = [compiled.micro_batches(compiled.train_split, compiled.sampler.micro_batches(s)) for s in range(3)]
    assert {b[0]["input_ids"].shape[1] for b in batches} == {512}
    assert len({b[0]["num_tokens"] for b in batches}) > 1  # the rows' real lengths differ
    compiled_losses = losses("train.compile=true", f"output_dir={tmp_path / 'compiled'}")
    log = capsys.readouterr().out
    assert "torch.compile:" in log and "in step 1" in log and "recompile" not in log
    assert compiled_losses == pytest.approx(losses(f"output_dir={tmp_path / 'eager'}"), rel=1e-4)


def test_compile_refuses_what_would_silently_run_uncompiled(hotel_overrides):
    with pytest.raises(ValueError, match="does not combine with train.grad_ckpt=true"):
        Trainer(compose(*hotel_overrides, "train.compile=true", "train.grad_ckpt=true"))


def test_dev_turns_are_answered_before_and_after_training(hotel_overrides, tmp_path, capsys):
    trainer = Trainer(compose(*hotel_overrides, "train.max_steps=2", "train.show_dev_turns=2", "optim.lr=1e-2",
                              "eval.max_new_tokens=8"))
    untrained = trainer.answer_dev_turns()  # greedy: what train() shows for step 0
    trainer.train()
    trained = trainer.answer_dev_turns()
    shown = (tmp_path / "run" / "before_after.md").read_text(encoding="utf-8")
    assert shown in capsys.readouterr().out
    turns = trainer.shown_turns
    assert len(turns) == 2 and shown.count("- **Reference:**") == 2
    for n, (turn, before, after) in enumerate(zip(turns, untrained, trained), 1):
        assert f"## {n}. {turn.source}, turn {turn.index}" in shown and f"**User:** {turn.user}" in shown
        assert f"- **Reference:** {turn_text(turn.reference)}" in shown
        assert f"- **Step 0:** {turn_text(before['prediction'])}" in shown
        assert f"- **Step 2:** {turn_text(after['prediction'])}" in shown


def test_the_quickstart_recipe_fine_tunes_smollm2_and_shows_progress():
    cfg = compose("recipe=quickstart")
    assert (cfg.model.name, cfg.peft.method, list(cfg.peft.target_modules)) == ("smollm2", "lora", ["all-linear"])
    assert cfg.data.dev and cfg.train.eval_every > 0 and cfg.train.show_dev_turns == 1
    assert cfg.train.max_steps * cfg.train.seq_len <= 16384  # sized for ~3 minutes on 2 CPU cores
    assert compose("recipe=quickstart", "train.max_steps=3").train.max_steps == 3  # the command line still wins
