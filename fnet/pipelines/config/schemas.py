"""Structured config schemas: one dataclass per config group of ``conf/`` and one per primary config.

The schemas hold **types, ranges and choices, never values**: every field is ``MISSING`` (``???``), so the YAML
files stay the only place a default lives (a field the composed config lacks is an error, not a silent Python
default). The exceptions are keys that a config may leave out, marked ``None``/``False`` below with the reason.

Range and choice rules sit in each field's metadata (``gt``, ``ge``, ``lt``, ``le``, ``choices``) because
OmegaConf checks types but has no value validators; :func:`fnet.pipelines.config.validate.validate_config` applies them.
``choices`` may name a constant of the code (``"fnet.networks:SIGNS"``) so a list of valid values is written once.

Groups whose content is free-form (``ica``, ``trainer``, ``optimizer``, ``scheduler``, each entry of ``logger``
and ``callbacks``, the per-dataset options of ``data.datasets``) are typed ``Any`` here: a ``_target_`` plus
constructor keyword arguments, which the validator checks against the target's own signature instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

__all__ = [
    "AnalyzeConfig",
    "DataConfig",
    "DatamoduleConfig",
    "EvalConfig",
    "EvaluateConfig",
    "FewshotConfig",
    "MaskConfig",
    "ModelConfig",
    "ModuleConfig",
    "NetworksConfig",
    "PathsConfig",
    "PosAnalysisConfig",
    "PromptConfig",
    "RecordConfig",
    "TaskConfig",
    "TrainConfig",
    "ANALYSIS_SCHEMAS",
    "DATASET_RULES",
    "ICA_RULES",
]


def req(**rules: Any) -> Any:
    """A required field (its value comes from the YAML) with range/choice ``rules`` in its metadata."""
    return field(default=MISSING, metadata=rules)


# --------------------------------------------------------------------------------------------------------------
# groups shared by the entry points
# --------------------------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    _target_: str = req()
    name: str = req()
    dtype: str = req()
    device: str = req()
    trust_remote_code: bool = req()
    # where the blocks / MLPs are, for architectures found by structure (null = found automatically); a model
    # file may leave them out, so they are the only model keys with a value here (null = "not given")
    blocks: Optional[str] = None
    mlp: Optional[str] = None
    down_proj: Optional[str] = None
    device_map: Optional[Any] = None


@dataclass
class PathsConfig:
    root_dir: str = req()
    output_dir: str = req()
    cache_dir: str = req()
    data_dir: str = req()


@dataclass
class RecordConfig:
    signal: str = req(choices="fnet.models:SIGNALS")
    max_length: int = req(gt=0)
    batch_size: int = req(gt=0)


@dataclass
class NetworksConfig:
    alpha: float = req(gt=0)
    rule: str = req(choices="fnet.networks:RULES")
    percentile: float = req(gt=0, lt=100)
    sign: str = req(choices="fnet.networks:SIGNS")
    match_threshold: float = req(ge=0, le=1)
    source: str = req()


@dataclass
class DataConfig:
    _target_: str = req()
    n_template: int = req(gt=0)  # the group ICA is fitted on the template texts: none is nothing to fit
    n_individual: int = req(ge=0)
    seed: int = req()
    datasets: Dict[str, Any] = req()  # name -> loader options (free-form per source; fnet.recording checks them)


#: rules of keys inside free-form groups: every ``ica`` config's ``n_components`` (its upper bound, the model's
#: neuron count, is checked once the model's config is read), and a data set's own sampling keys
#: (``data.datasets.<name>.n_template``, ...); each value must be an integer
ICA_RULES: Dict[str, Dict[str, Any]] = {"n_components": {"ge": 1}}
DATASET_RULES: Dict[str, Dict[str, Any]] = {"n_template": {"gt": 0}, "n_individual": {"ge": 0}, "min_chars": {"ge": 0}}


# --------------------------------------------------------------------------------------------------------------
# evaluate.py / train.py
# --------------------------------------------------------------------------------------------------------------
@dataclass
class PromptConfig:
    template: str = req()
    target_delimiter: str = req()
    fewshot_delimiter: str = req()


@dataclass
class FewshotConfig:
    seed: int = req()
    sampling: str = req(choices=("fixed", "per_example"))
    balanced: bool = req()


@dataclass
class TaskConfig:
    """Keys of ``conf/task/*.yaml``; :class:`fnet.scoring.tasks.TaskSpec` checks how they fit together."""

    name: str = req()
    type: str = req(choices="fnet.scoring.tasks:TASK_TYPES")
    description: str = req()
    source: str = req(choices=("auto", "local", "hub"))
    eval_split: str = req()
    fewshot_split: Optional[str] = req()
    hub: Optional[Dict[str, Any]] = req()
    local: Optional[Dict[str, Any]] = req()
    target: Dict[str, Any] = req()
    prompt: PromptConfig = req()
    choices: Optional[List[str]] = req()
    metric: List[str] = req(choices="fnet.scoring.tasks:METRICS")
    scoring: str = req(choices="fnet.scoring.tasks:SCORINGS")
    calibrate: bool = req()
    chat_template: Any = req(choices=(True, False, "auto"))
    num_fewshot: int = req(ge=0)
    fewshot: FewshotConfig = req()
    limit: Optional[int] = req(gt=0)
    seed: int = req()
    # type-specific blocks: generation tasks (and loglik tasks that may be scored by generation) have
    # `generation`, perplexity tasks `perplexity`; a task file without one leaves it out
    generation: Optional[Dict[str, Any]] = None
    perplexity: Optional[Dict[str, Any]] = None


@dataclass
class MaskConfig:
    mode: str = req(choices="fnet.intervene:MASKS")
    networks: Any = req()  # int | list | "all" | "range(0,10)" | "0,3,5" (fnet.intervene.parse_networks)
    match: Any = req()
    seed: int = req()
    stream: Optional[str] = req()
    fraction: Optional[float] = req(gt=0, le=1)
    value: float = req()
    exclude_reference: bool = req()
    networks_file: Optional[str] = req()
    scale_file: Optional[str] = req()
    bins: Any = req()  # int > 0, or quantile edges in (0, 1) (fnet.intervene.controls.magnitude_bins)
    top_k: int = req(gt=0)
    n_units: int = req(gt=0)
    unit: int = req(ge=0)
    ablation: str = req(choices="fnet.intervene.registry:ABLATIONS")
    as_published: bool = req()
    # apply a NetworkSet made for another model (off unless a mask file says so)
    allow_foreign: bool = False


@dataclass
class EvalConfig:
    batch_size: int = req(gt=0)
    num_workers: int = req(ge=0)
    max_length: Optional[int] = req(gt=0)
    bootstrap: int = req(ge=0)
    baseline: bool = req()
    save_predictions: bool = req()


@dataclass
class DatamoduleConfig:
    _target_: Optional[str] = req()
    source: str = req(choices=("auto", "local", "hub"))
    split: List[float] = req()
    split_seed: int = req()
    max_length: int = req(gt=0)
    input_format: str = req(choices=("plain", "prompt"))
    batch_size: int = req(gt=0)
    eval_batch_size: int = req(gt=0)
    max_train_rows: Optional[int] = req(gt=0)
    max_eval_rows: Optional[int] = req(gt=0)
    num_workers: int = req(ge=0)
    padding_side: Optional[str] = req(choices=("left", "right"))
    doc_stride: int = req(gt=0)


@dataclass
class ModuleConfig:
    _target_: Optional[str] = req()
    trainable_layers: Optional[int] = req(ge=0)
    head_dropout: float = req(ge=0, lt=1)
    checkpoint_frozen: bool = req()
    max_answer_length: int = req(gt=0)
    cache_features: bool = req()
    lora: Optional[Dict[str, Any]] = req()  # keys checked by fnet.lit.lora.lora_settings


# --------------------------------------------------------------------------------------------------------------
# analysis=<...>: chosen by the group's `run`
# --------------------------------------------------------------------------------------------------------------
@dataclass
class NetworksAnalysisConfig:
    run: str = req()


@dataclass
class TreebankConfig:
    dir: str = req()
    pattern: str = req()
    source: str = req(choices=("auto", "local", "hub"))
    hub_name: str = req()
    hub_config: str = req()
    train_split: str = req()
    test_split: str = req()


@dataclass
class AttributionConfig:
    method: str = req(choices="fnet.attribution:METHODS")
    steps: int = req(gt=0)
    baseline: str = req(choices="fnet.attribution:BASELINES")
    alpha_batch: Optional[int] = req(gt=0)
    batch_size: int = req(gt=0)
    positions: str = req(choices=("target", "sum"))
    max_sentences: Optional[int] = req(gt=0)
    max_samples_per_tag: Optional[int] = req(gt=0)


@dataclass
class SelectionConfig:
    top_fraction: float = req(gt=0, le=1)
    top_k: int = req(gt=0)
    rank_by: str = req(choices="fnet.attribution:RANK_BY")
    rule: str = req(choices="fnet.attribution:SELECTION_RULES")
    min_samples: int = req(ge=1)


@dataclass
class ClassifierConfig:
    position: str = req(choices=("word", "before"))
    max_train_sentences: Optional[int] = req(gt=0)
    max_test_sentences: Optional[int] = req(gt=0)
    random_seeds: List[int] = req()
    all_neurons: bool = req()
    C: float = req(gt=0)
    max_iter: int = req(gt=0)
    bootstrap: int = req(ge=0)


@dataclass
class LesionConfig:
    enabled: bool = req()
    max_sentences: Optional[int] = req(gt=0)
    random_seeds: List[int] = req()
    min_words: int = req(ge=0)
    tags: Optional[List[str]] = req()  # checked against the treebank's tags by fnet.pipelines.pos


@dataclass
class PosAnalysisConfig:
    run: str = req()
    progress: bool = req()
    sentence_batch_size: Optional[int] = req(gt=0)
    treebank: TreebankConfig = req()
    attribution: AttributionConfig = req()
    selection: SelectionConfig = req()
    classifier: ClassifierConfig = req()
    lesion: LesionConfig = req()
    ica_overlap: bool = req()
    ica_networks_file: Optional[str] = req()


#: analysis.run -> its schema; another `run` is checked only for being importable
ANALYSIS_SCHEMAS: dict[str, type] = {
    "fnet.pipelines.analyze.run": NetworksAnalysisConfig,
    "fnet.pipelines.pos.run_pos_analysis": PosAnalysisConfig,
}


# --------------------------------------------------------------------------------------------------------------
# primary configs (conf/analyze.yaml, conf/evaluate.yaml, conf/train.yaml)
# --------------------------------------------------------------------------------------------------------------
@dataclass
class _Common:
    task_name: str = req()
    seed: int = req()
    ckpt_path: Optional[str] = req()
    model: ModelConfig = req()
    paths: PathsConfig = req()
    logger: Optional[Dict[str, Any]] = req()  # name -> {_target_, kwargs}; logger=none leaves it empty
    experiment_name: Optional[str] = None  # set by conf/experiment/* only


@dataclass
class AnalyzeConfig(_Common):
    analysis: Any = req()  # one of ANALYSIS_SCHEMAS, chosen by analysis.run
    record: RecordConfig = req()
    networks: NetworksConfig = req()
    data: DataConfig = req()
    ica: Any = req()
    individual: bool = req()
    map_panels: Optional[int] = req(ge=1)


@dataclass
class EvaluateConfig(_Common):
    task: TaskConfig = req()
    mask: MaskConfig = req()
    record: RecordConfig = req()
    networks: NetworksConfig = req()
    data: DataConfig = req()
    ica: Any = req()
    eval: EvalConfig = req()
    trainer: Any = req()
    callbacks: Dict[str, Any] = req()
    finetune_eval: Dict[str, Any] = req()


@dataclass
class TrainConfig(_Common):
    task: TaskConfig = req()
    torch_threads: Optional[int] = req(gt=0)
    test_after_fit: bool = req()
    datamodule: DatamoduleConfig = req()
    module: ModuleConfig = req()
    optimizer: Any = req()
    scheduler: Any = req()
    trainer: Any = req()
    callbacks: Dict[str, Any] = req()
