"""Fine-tune a causal LM on a task, then test its best checkpoint on the held-out split.

    python train.py                                        # SmolLM2-135M on SST-2 (offline split of the dev file)
    python train.py experiment=finetune_sst2               # the minutes-on-a-CPU recipe
    python train.py ckpt_path=outputs/train/<run>/checkpoints/last.ckpt   # resume a killed run
    python train.py trainer=ddp_cpu                         # 2 CPU processes (gloo)

Everything happens in :func:`fnet.pipelines.train.run_training`; see conf/train.yaml.
"""

import hydra
from omegaconf import DictConfig

from fnet.pipelines.config import register_configs, validate_config
from fnet.pipelines.hydra_utils import task_wrapper
from fnet.pipelines.train import run_training

register_configs()


@task_wrapper
def run(cfg: DictConfig):
    validate_config(cfg, "train")  # unknown keys (+typos), types, ranges: before any work

    return run_training(cfg)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
