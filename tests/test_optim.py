"""Every `optim=` choice trains the tiny model, stores the state it claims, and resumes bit-exactly."""
import warnings

import pytest
import torch

from conftest import assert_resume_matches, compose
from trainer import checkpoint
from trainer.loop import Trainer
from trainer.optim import OPTIMIZERS

NAMES = list(OPTIMIZERS)
PAGED = [n for n in NAMES if n.startswith("paged_")]
# r=32 makes every LoRA factor of the tiny model >= 4096 elements, bitsandbytes' threshold for 8-bit state.
LORA = ["peft.r=32", "peft.dropout=0.1"]


def moment_dtypes(state: dict) -> set[torch.dtype]:
    """dtypes of Adam's two moments over all parameters (torch: exp_avg*, bitsandbytes: state1/2)."""
    keys = ("exp_avg", "exp_avg_sq", "state1", "state2")
    return {v.dtype for s in state.values() for k, v in s.items() if k in keys}


def test_all_configs_are_registered():
    for name in NAMES:
        assert compose(f"optim={name}").optim.name == name


def test_unknown_optimizer_names_the_allowed_ones(hotel_overrides):
    with pytest.raises(ValueError, match=r"optim\.name=sgd: unknown; allowed: adamw, adamw_8bit"):
        Trainer(compose(*hotel_overrides, "optim.name=sgd"))


@pytest.mark.filterwarnings("ignore:optim.name=paged")
@pytest.mark.parametrize("name", NAMES)
def test_resume_is_bit_exact_for_every_optimizer(name, hotel_overrides, tmp_path):
    common = hotel_overrides + LORA + [f"optim={name}", "train.max_steps=8", "train.save_every=4"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        straight = Trainer(compose(*common))
    fallback = [w for w in caught if "paging needs CUDA unified memory" in str(w.message)]
    assert len(fallback) == (name in PAGED)
    if name in PAGED:  # on CPU the unpaged equivalent runs, and bitsandbytes' own paging warning never fires
        assert not straight.engine.optimizer.is_paged and not any("Paged optimizers" in str(w.message) for w in caught)
    straight.train()
    expected = {"adamw": torch.float32, "adamw_8bit": torch.uint8, "paged_adamw_8bit": torch.uint8,
                "paged_adamw_32bit": torch.float32}[name]
    assert moment_dtypes(straight.engine.optimizer.state) == {expected}
    run = tmp_path / "run"
    # the checkpoint holds the real state (8-bit stays uint8) and loads under weights_only=True
    saved = checkpoint.load_state(run / "checkpoints" / "step_4")["optimizer"]["state"]
    if name.endswith("8bit"):
        quant = [s["__bnb_optimizer_quant_state__"] for s in saved.values()]
        assert {q["state1"].dtype for q in quant} == {torch.uint8}
    assert_resume_matches(common, tmp_path)
