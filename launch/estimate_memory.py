"""Expected peak GPU memory of a training run, from its config alone (no weights are loaded):

    python launch/estimate_memory.py [the same overrides as train.py] [--zero-stage 1|2|3 --world-size N]
                                     [--master-weights]

e.g. `model=qwen2 model.path=/models/Qwen2-7B-Instruct peft=lora train.batch_size=1 train.seq_len=4096
train.grad_ckpt=true`. Reads `model.path`'s config.json; see models/memory.py for what each term counts.
`--zero-stage`/`--world-size` give the per-rank memory under ZeRO (the stage defaults to `dist.zero_stage`
where the dist config has one; `dist=fsdp` counts as stage 3, `dist=fsdp_grad_op` as stage 2, whose memory
they match); `--master-weights` adds the fp32 master copy that DeepSpeed mixed precision keeps (our loop and
FSDP keep the weights in `model.dtype`). Writes nothing.
"""
import argparse
import sys

import hydra
from _bootstrap import CONFIG_PATH
from omegaconf import DictConfig

from data.rules import check_config
from eval.cli import check_command_line
from models.memory import Setup, estimate_memory, format_table, load_model_config

# An estimate needs no Hydra run directory, saved config or log file.
_WRITE_NOTHING = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                  "hydra/hydra_logging=disabled"]


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3))  # default: dist's (fsdp: 3, fsdp_grad_op: 2)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--master-weights", action="store_true")
    args, overrides = parser.parse_known_args()
    check_command_line(CONFIG_PATH, "train", overrides, lambda cfg, _: check_config(cfg))
    sys.argv = [sys.argv[0], *overrides, *_WRITE_NOTHING]
    options = {k: v for k, v in vars(args).items() if v is not None}

    @hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
    def estimate(cfg: DictConfig) -> None:
        print(format_table(estimate_memory(load_model_config(cfg.model), Setup.from_config(cfg, **options))))

    estimate()


if __name__ == "__main__":
    main()
