"""Evaluate a (masked) language model on one task: ``python evaluate.py task=sst2 mask=lesion mask.networks=3``.

Composition only; the logic is :func:`fnet.pipelines.evaluate.run` (see ``conf/evaluate.yaml`` for the options).
"""

import hydra
from omegaconf import DictConfig

from fnet.pipelines.config import register_configs, validate_config
from fnet.pipelines.evaluate import run as evaluate
from fnet.pipelines.hydra_utils import task_wrapper

register_configs()


@task_wrapper
def run(cfg: DictConfig) -> dict | None:
    validate_config(cfg, "evaluate")  # unknown keys (+typos), types, ranges: before any work
    return evaluate(cfg)


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    row = run(cfg)
    return None if row is None else row.get("score")  # the job's value for Hydra sweepers


if __name__ == "__main__":
    main()
