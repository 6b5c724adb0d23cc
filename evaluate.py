"""Evaluate a (masked) language model on one task: ``python evaluate.py task=sst2 mask=lesion mask.networks=3``.

Composition only; the logic is :func:`fnet.evaluation.run` (see ``conf/evaluate.yaml`` for the options).
"""

import hydra
from omegaconf import DictConfig

from fnet.evaluation import run
from fnet.utils import task_wrapper


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    row = task_wrapper(run)(cfg)
    return None if row is None else row.get("score")  # the job's value for Hydra sweepers


if __name__ == "__main__":
    main()
