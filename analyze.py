"""Record a model's MLP signals, decompose them and extract functional networks (or run another analysis).

    python analyze.py                         # default: SmolLM2-135M, built-in corpus, K=10, offline
    python analyze.py -m ica.n_components=10,64,128
    python analyze.py analysis=pos            # key neurons for part-of-speech
"""

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig

from fnet.pipelines.config import register_configs, validate_config
from fnet.pipelines.hydra_utils import task_wrapper

register_configs()


@task_wrapper
def run(cfg: DictConfig):
    validate_config(cfg, "analyze")  # unknown keys (+typos), types, ranges: before any work
    return get_method(cfg.analysis.run)(cfg)


@hydra.main(config_path="conf", config_name="analyze", version_base="1.3")
def main(cfg: DictConfig):
    run(cfg)


if __name__ == "__main__":
    main()
