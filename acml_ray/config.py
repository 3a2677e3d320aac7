"""Typed configuration for every acml-ray stage, loaded from YAML.

Defaults reproduce the reference ACML setup (Xu et al., JCIM 2025): 5-layer GIN, hidden 64,
dropout 0.2, sum pooling, projection cells [512, 512], soft-target CLIP loss at tau = 1.0,
AdamW lr 1e-3 wd 1e-3, batch 128 (drop_last), 100 epochs, random 80/20 split with seed 4
(a seeded hash of each InChIKey decides its side; see `acml_ray.data.paired.validation_mask`).
YAML files only need to name what differs from these defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DownstreamMethod = Literal["linear_probe", "finetune", "scratch", "ecfp_rf", "ecfp_linear"]
EvalSection = Literal["retrieval", "isomers", "interpret", "downstream"]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class FeaturizerConfig(_Strict):
    """Which molecules become graphs (the reference filter) and how."""

    max_heavy_atoms: int = Field(
        50,
        ge=1,
        description="drop molecules with more heavy atoms (also checked, dummy atoms included, before sanitisation)",
    )
    min_atoms: int = Field(3, ge=1, description="drop molecules with fewer atoms (reference: <= 2)")
    max_smiles_chars: int = Field(
        2000,
        ge=1,
        description="reject longer inputs before parsing (bounds the work per row; see acml_ray/chem/guard.py)",
    )
    allow_radicals: bool = Field(
        False,
        description="keep molecules with unpaired electrons (in SMILES "
        "data these are mostly lost hydrogens, e.g. [C]CC)",
    )


class GraphEncoderConfig(_Strict):
    """Hu et al. style GIN with bond embeddings."""

    num_layers: int = Field(5, ge=1)
    hidden_dim: int = Field(64, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    pooling: Literal["sum", "mean", "max"] = "sum"
    jk: Literal["last", "sum", "concat"] = "last"
    out_dim: int | None = Field(None, description="readout MLP output; default hidden_dim")


class ProjectionConfig(_Strict):
    """CLIP-style projection cells shared in shape by the graph and modality sides."""

    dims: list[int] = Field(default_factory=lambda: [512, 512])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @field_validator("dims")
    @classmethod
    def _non_empty(cls, v: list[int]) -> list[int]:
        if not v or any(d <= 0 for d in v):
            raise ValueError("projection dims must be a non-empty list of positive ints")
        return v


class LossConfig(_Strict):
    """Contrastive objective: the reference soft-target CLIP loss or standard InfoNCE."""

    kind: Literal["clip_soft", "infonce"] = "clip_soft"
    temperature: float = Field(1.0, gt=0.0)
    learnable_temperature: bool = False


class OptimizerConfig(_Strict):
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-3, ge=0.0)
    # DeepSpeed clips to a global gradient norm of 1.0 unless told otherwise; stated here so the
    # recipe is visible (and reproducible outside DeepSpeed), not an engine default.
    grad_clip_norm: float = Field(1.0, ge=0.0, description="clip the global gradient norm to this (0: no clipping)")


class ModalityConfig(_Strict):
    """One frozen modality encoder; `options` are passed to the modality's constructor."""

    name: str = "image"
    weight: float = Field(1.0, gt=0.0, description="loss weight when training on several")
    options: dict[str, Any] = Field(default_factory=dict)


class DataSourceConfig(_Strict):
    """A molecule source: a shipped data set by name, or a CSV/Parquet path or URI."""

    name: str
    path: str | None = None
    smiles_column: str = "smiles"
    limit: int | None = Field(None, ge=1, description="random sample of this many rows")
    seed: int = 0


class DataConfig(_Strict):
    sources: list[DataSourceConfig] = Field(default_factory=lambda: [DataSourceConfig(name="chembl_approved_drugs")])
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 4


class IsolationConfig(_Strict):
    """How `acml embed` survives native crashes in featurisation (see `acml_ray/sandbox.py`).

    Each featurise batch runs in a child process; when the child dies (segfault, abort, memory
    limit), the batch is retried, then bisected, and the rows that still kill it on their own are
    quarantined with reason ``worker crashed``; every other row goes on.
    """

    enabled: bool = Field(True, description="featurise in a child process (off: a crash kills the Ray task)")
    retries: int = Field(1, ge=0, description="retries of a whole batch whose child died, before bisection")
    timeout_s: float | None = Field(600.0, gt=0, description="a batch running longer counts as a crash")
    memory_mb: int | None = Field(4096, ge=256, description="address-space limit of the child process")


class EmbedConfig(_Strict):
    """`acml embed`: molecule shards in, training-table shards out (Ray Data, actor pools)."""

    input: str | None = Field(None, description="Parquet/CSV file or folder of shards: path or s3:// URI")
    input_format: Literal["auto", "parquet", "csv"] = "auto"
    smiles_column: str = "smiles"
    id_column: str | None = Field(None, description="molecule id column; default: the InChIKey")
    keep_columns: list[str] = Field(default_factory=list, description="input columns copied to the output")
    output: str | None = Field(None, description="output folder or URI; default OUTPUT/embedded")
    featurize_batch_size: int = Field(
        256, ge=1, description="rows per featurise task: the input is cut into blocks of this many rows"
    )
    actor_batch_size: int = Field(64, ge=1, description="rows per call of an encoder actor")
    encoder_batch_size: int = Field(32, ge=1, description="rows per encoder forward pass")
    concurrency: int = Field(1, ge=1, description="encoder actors per modality")
    num_cpus_per_actor: float = Field(1.0, ge=0.0)
    # Reserved CPUs and threads differ on purpose: two encoder actors at 0.5 CPU leave room for
    # featurisation, but the image encoder is ~5x slower than the text one and one thread leaves
    # a core idle once the fast encoder has caught up.
    threads_per_actor: int | None = Field(
        None, ge=1, description="torch threads of each encoder actor; default num_cpus_per_actor rounded down, >= 1"
    )
    num_gpus_per_actor: float = Field(0.0, ge=0.0)
    compact_cache: bool = Field(True, description="merge new cache shards at the end of a run")
    isolation: IsolationConfig = Field(default_factory=IsolationConfig)
    max_retries: int = Field(
        2,
        ge=0,
        description="Ray-level retries of a task or restarts of an actor that "
        "died (a lost node); bounded, never Ray's default of forever",
    )


class TrainConfig(_Strict):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=2)
    drop_last: bool = True
    seed: int = 0
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 on GPU, fp32 on CPU")
    log_every_steps: int = Field(10, ge=1)
    # Where the training tables are (local paths, directories or s3:// URIs); default: the
    # tables `acml demo`/prepare writes under OUTPUT/data.
    train_table: str | None = None
    val_table: str | None = None
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per worker (CPU comes from cpus_per_worker)"
    )
    storage_path: str | None = Field(None, description="Ray run storage (path or s3://); default OUTPUT/ray_results")
    gather_negatives: bool = Field(True, description="all-gather embeddings so negatives span all workers")
    sync_batchnorm: bool = Field(False, description="SyncBatchNorm in the GIN across workers (GPU only)")
    lr_schedule: Literal["none", "cosine"] = "none"
    warmup_steps: int = Field(0, ge=0)
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="also checkpoint mid-epoch every N steps (always at epoch end)"
    )
    checkpoints_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint; -1 = unlimited")
    early_stopping_metric: str = "val/score"
    early_stopping_mode: Literal["max", "min"] = "max"
    patience: int | None = Field(None, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0)
    # Streamed input (docs/training.md "Data"): a worker holds its shuffle buffer and the
    # prefetched batches, not the table, so its memory does not grow with the table.
    shuffle_buffer_rows: int = Field(
        8192, ge=0, description="per-worker local shuffle buffer in rows, reseeded every epoch (0: none)"
    )
    prefetch_batches: int = Field(4, ge=0, description="batches collated ahead of the step, in background threads")
    # Ray Data hands a worker whole blocks, one per file (or row group) by default: with files of
    # 20k rows x 1,024-float vectors a block is ~100 MiB and the few the worker prefetches make its
    # memory follow the file layout. Capping the block size bounds it independently of the files.
    block_mib: float = Field(
        8, gt=0, description="largest block (MiB) Ray Data reads the training tables into; bounds a worker's read-ahead"
    )
    object_store_table_mib: float = Field(
        64,
        ge=0,
        description="tables up to this size on disk are read once into Ray's object store (shared "
        "memory) instead of from the files every epoch; 0: always stream from the files",
    )

    @model_validator(mode="after")
    def _precision_fits_device(self) -> TrainConfig:
        if not self.use_gpu and self.precision in ("bf16", "fp16"):
            raise ValueError(
                f"train.precision={self.precision} needs use_gpu: true (CPU training runs fp32; use precision: auto)"
            )
        if self.sync_batchnorm and not self.use_gpu:
            raise ValueError("train.sync_batchnorm needs use_gpu: true (torch SyncBatchNorm has no CPU kernel)")
        return self

    def resolved_precision(self) -> str:
        """The precision actually used: ``auto`` -> bf16 on GPU, fp32 on CPU."""
        if self.precision == "auto":
            return "bf16" if self.use_gpu else "fp32"
        return self.precision


class IsomerEvalConfig(_Strict):
    """Isomer discrimination sets: constitutional (same formula) and stereoisomers."""

    constitutional_source: Literal["qm9", "moses", "held_out", "none"] = Field(
        "qm9", description="held_out: formula groups among the evaluated held-out molecules"
    )
    constitutional_groups: int = Field(40, ge=0, description="formula groups sampled")
    stereo_source: str = Field(
        "chembl_approved_drugs",
        description="shipped set with chiral molecules, or held_out (the evaluated held-out molecules); 'none' skips",
    )
    stereo_molecules: int = Field(40, ge=0, description="chiral molecules whose stereoisomers are enumerated")
    max_set_size: int = Field(8, ge=2, description="isomers per set at most (sampled)")
    pool_limit: int = Field(20000, ge=100, description="molecules read to find formula groups")


class InterpretConfig(_Strict):
    """Correlation of graph embeddings with RDKit descriptors."""

    source: DataSourceConfig | None = Field(None, description="molecules; default the held-out set")
    n_components: int = Field(5, ge=1)
    cv_folds: int = Field(5, ge=2)
    colour_by: str = Field("LogP", description="descriptor colouring the 2-D projection")


LabelKind = Literal["classification", "regression"]


class TaskConfig(_Strict):
    """A property-prediction task: a shipped benchmark name, or a MoleculeNet/TDC-style file."""

    name: str
    path: str | None = Field(None, description="CSV/TSV/Parquet path or URI")
    smiles_column: str | None = Field(None, description="default: smiles/SMILES/Drug")
    label_columns: list[str] | None = Field(None, description="default: Y, or numeric non-id columns")
    kind: LabelKind | dict[str, LabelKind] | None = Field(
        None,
        description="one kind for every label or {label: kind}; default per label: only 0/1 values "
        "-> classification, else regression (mixed kinds become one task per kind)",
    )
    limit: int | None = Field(
        None, ge=10, description="seeded random sample of this many rows before the split (default: every row)"
    )
    relation_column: str = Field(
        "relation", description="censoring qualifier of regression labels (<, >, <=, >=), used when the file has it"
    )
    censored: Literal["exclude", "keep"] = Field(
        "exclude", description="censored regression labels: left out of training and metrics, or used as exact values"
    )


class DownstreamConfig(_Strict):
    """Scaffold-split property prediction: probe/fine-tune vs scratch GIN vs ECFP baselines."""

    tasks: list[TaskConfig] = Field(
        default_factory=lambda: [TaskConfig(name="b3db_classification"), TaskConfig(name="freesolv")]
    )
    methods: list[DownstreamMethod] = Field(default_factory=lambda: list(get_args(DownstreamMethod)))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    epochs: int = Field(10, ge=1, description="most epochs of a fine-tune / scratch training")
    patience: int | None = Field(
        3,
        ge=1,
        description="stop a training after this many epochs without a lower validation loss (None: run every epoch)",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="trainings run in parallel; default: Ray's free CPUs "
        "when Ray is initialised, else the CPUs this process "
        "may use",
    )
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0.0)
    head_hidden: int = Field(64, ge=1)
    rf_trees: int = Field(100, ge=1)
    ecfp_bits: int = Field(2048, ge=16)


class TrackingConfig(_Strict):
    """MLflow tracking. URI precedence: ``uri`` > ``MLFLOW_TRACKING_URI`` > sqlite under OUTPUT."""

    enabled: bool = True
    uri: str | None = None
    experiment: str = "acml"
    artifact_location: str | None = Field(None, description="for a new experiment; default OUTPUT/mlartifacts")
    parent_run_id: str | None = Field(None, description="open runs nested under this run (set by `acml tune`)")


class TuneConfig(_Strict):
    """`acml tune`: a Ray Tune study over distributed training (HyperOpt search, ASHA stopping).

    Each trial is one training run (``train.num_workers`` workers of ``train.cpus_per_worker``
    CPUs each, GPUs with ``train.use_gpu``); ``max_concurrent_trials`` bounds how many share
    the cluster at once.
    """

    name: str = Field(
        "study",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="study folder under storage_path; the same name resumes it",
    )
    storage_path: str | None = Field(None, description="study storage (path or s3://); default OUTPUT")
    num_samples: int = Field(20, ge=1, description="trials in the study")
    max_concurrent_trials: int = Field(2, ge=1)
    seed: int = Field(0, description="HyperOpt's random state")
    n_initial_points: int = Field(10, ge=1, description="random trials before TPE takes over")
    start_from_base: bool = Field(True, description="first trial = the base config (projected into the space)")
    metric: str = "val/score"
    mode: Literal["max", "min"] = "max"
    max_t: int | None = Field(None, ge=1, description="epochs per trial at most; default train.epochs")
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(2.0, gt=1.0)
    driver_cpus: float = Field(0.0, ge=0.0, description="CPUs reserved for each trial's driver (it only waits)")


class EvalConfig(_Strict):
    pool_size: int = Field(128, ge=2)
    pool_repeats: int = Field(20, ge=1, description="random pools averaged at pool_size")
    top_k: list[int] = Field(default_factory=lambda: [1, 2, 3, 5, 10, 20])
    seed: int = 0
    sections: list[EvalSection] = Field(default_factory=lambda: list(get_args(EvalSection)))
    chunk_mib: int = Field(256, ge=1, description="memory bound of one similarity chunk")
    isomers: IsomerEvalConfig = Field(default_factory=IsomerEvalConfig)
    interpret: InterpretConfig = Field(default_factory=InterpretConfig)
    downstream: DownstreamConfig = Field(default_factory=DownstreamConfig)
    tracking_uri: str | None = Field(None, description="MLflow URI; default $MLFLOW_TRACKING_URI")
    mlflow_run_id: str | None = Field(None, description="log into this run (else the active/a new one)")
    mlflow_experiment: str = "acml-evaluate"
    exclude_training: bool | None = Field(
        None,
        description="drop held-out/gallery molecules the model trained on (by InChIKey); "
        "default: on when the run's training table is known",
    )


class IndexConfig(_Strict):
    """`acml index`: a molecule library embedded by a trained model into a vector index (FAISS) on
    a path or s3:// (the library and the index location are command-line arguments); see
    `acml_ray.search`."""

    smiles_column: str | None = Field(
        None, description="library column of SMILES; default: smiles, SMILES, Smiles or canonical_smiles"
    )
    id_column: str | None = Field(None, description="default: id/ID/name when present, else the InChIKey")
    chunk_rows: int = Field(100_000, ge=1, description="library rows per shard: the unit of resume")
    featurize_batch_size: int = Field(1024, ge=1)
    encode_batch_size: int = Field(1024, ge=1, description="graphs per encoder forward pass")
    rows_per_run: int = Field(
        1_000_000,
        ge=1,
        description="library rows per Ray Data execution (actors start once per run; bounds the object store)",
    )
    concurrency: int | None = Field(
        None, ge=1, description="graph-encoder actors; default one per GPU, else one per num_cpus_per_actor CPUs"
    )
    num_cpus_per_actor: float = Field(1.0, ge=0.0)
    num_gpus_per_actor: float | None = Field(None, ge=0.0, description="default: 1 when the cluster has GPUs")
    ann_threshold: int = Field(200_000, ge=1, description="rows from which an IVF (ANN) index replaces exact search")
    nlist: int | None = Field(None, ge=1, description="IVF lists; default 4 * sqrt(rows)")
    # None: measured per index and modality (acml_ray.search.calibrate). A fixed 64 reached
    # recall@10 0.992 at the full MOSES set for one model's queries and 0.928 for another's.
    nprobe: int | None = Field(
        None, ge=1, description="IVF lists scanned per query; default: the smallest reaching target_recall"
    )
    target_recall: float = Field(
        0.99, gt=0.0, le=1.0, description="recall@calibration_top_k vs exact search the default nprobe must reach"
    )
    calibration_queries: int = Field(
        500, ge=0, description="queries per modality that calibrate nprobe after each FAISS update (0: off)"
    )
    calibration_top_k: int = Field(10, ge=1, description="k of the recall@k that calibration measures")
    calibration_table: str | None = Field(
        None,
        description="your own calibration queries (a query table or folder as acml search --query takes); "
        "default: library rows for structure-derived inputs, the model run's held-out table for spectra",
    )
    calibration_seed: int = 0
    train_per_list: int = Field(40, ge=39, description="k-means training rows per IVF list (FAISS warns below 39)")


class AblationConfig(_Strict):
    """One comparison run of `acml study`: the study config with `overrides` (dotted keys)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", description="folder name under OUTPUT/ablations")
    overrides: dict[str, Any] = Field(default_factory=dict, description="e.g. {loss.kind: soft_clip}")


class StudyTarget(_Strict):
    """A claim the study's results page checks against the study model's evaluation report.

    ``metric`` is a path into that report (e.g. ``[retrieval, image->graph, pool_all, top10]``).
    The claim is met when the figure is at least ``at_least``, or at least the same figure of the
    ablation ``versus`` minus ``within`` (e.g. a joint model against its single-pair models); with
    neither the figure is only reported.
    """

    claim: str
    metric: list[str] = Field(min_length=1)
    at_least: float | None = None
    versus: str | None = Field(None, description="an ablation's name (study.ablations)")
    within: float = Field(0.0, ge=0.0, description="with versus: how far below the ablation still counts as met")
    paper: str = Field("-", description="the paper's figure, quoted beside the target")
    demo: str = Field("-", description="the demo's figure, quoted beside the target")

    @model_validator(mode="after")
    def _one_bar(self) -> StudyTarget:
        if self.at_least is not None and self.versus is not None:
            raise ValueError(f"target {self.claim!r}: give at_least or versus, not both")
        if self.versus is not None and self.metric[0] != "retrieval":
            # Ablations are scored on retrieval only (study.train_and_score).
            raise ValueError(
                f"target {self.claim!r}: versus compares retrieval figures; metric starts {self.metric[0]!r}"
            )
        return self


class StudyConfig(_Strict):
    """`acml study`: what the paper-scale study adds to one pipeline run (see `acml_ray.pipelines.study`)."""

    exclude_downstream: bool = Field(
        True,
        description="leave every molecule of eval.downstream.tasks out of the training molecules "
        "(matched on the InChIKey's connectivity block, so its stereoisomers go too)",
    )
    input_shards: int = Field(16, ge=1, description="Parquet files the molecule table is written as")
    ablations: list[AblationConfig] = Field(default_factory=list)
    ablation_train_rows: int | None = Field(
        None, ge=2, description="training rows of each ablation run (a seeded sample; default: all)"
    )
    ablation_epochs: int | None = Field(None, ge=1, description="epochs of each ablation run (default train.epochs)")
    compare_models: dict[str, str] = Field(
        default_factory=dict,
        description="{label: model folder, run or models:/ URI} evaluated on the same held-out set and tasks",
    )
    compare_sections: list[EvalSection] | None = Field(
        None,
        description="evaluation sections of the compared models (default eval.sections); retrieval, "
        "isomers and interpret re-embed the held-out set when a model's frozen encoders differ",
    )
    targets: list[StudyTarget] = Field(
        default_factory=list, description="claims the results page checks (the packaged configs list theirs)"
    )

    @model_validator(mode="after")
    def _names_resolve(self) -> StudyConfig:
        """Ablation names are unique, and every target's `versus` names one of them."""
        names = [a.name for a in self.ablations]
        if len(set(names)) != len(names):
            raise ValueError(f"ablation names listed twice: {names}")
        unknown = sorted({t.versus for t in self.targets if t.versus is not None} - set(names))
        if unknown:
            raise ValueError(f"targets compare with ablations that are not listed: {unknown}")
        return self


class ACMLConfig(_Strict):
    """Everything a run needs; sections mirror the sub-packages that consume them."""

    featurizer: FeaturizerConfig = Field(default_factory=FeaturizerConfig)
    graph_encoder: GraphEncoderConfig = Field(default_factory=GraphEncoderConfig)
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    modalities: list[ModalityConfig] = Field(default_factory=lambda: [ModalityConfig()])
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    study: StudyConfig = Field(default_factory=StudyConfig)
    output_dir: str = "runs/acml"
    cache_dir: str | None = Field(None, description="embedding cache root; default OUTPUT/cache")

    @model_validator(mode="after")
    def _unique_modalities(self) -> ACMLConfig:
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modalities listed twice: {names}")
        if not names:
            raise ValueError("at least one modality is required")
        return self

    @field_validator("output_dir")
    @classmethod
    def _local_output_dir(cls, v: str) -> str:
        if "://" in v:
            raise ValueError(
                f"output_dir must be a local folder, got {v!r}: it holds the local MLflow store and "
                "the copy of the best model; put tables, cache and checkpoints on object storage "
                "with embed.output, cache_dir and train.storage_path"
            )
        return v

    def resolved_cache_dir(self) -> str:
        """The embedding cache root (point several runs at one root to share it)."""
        return self.cache_dir or str(Path(self.output_dir) / "cache")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ACMLConfig:
    """Load an `ACMLConfig` from YAML (or defaults when `path` is None), then apply overrides.

    `path` is a YAML file or the name of a packaged config (`config_path`).

    `overrides` uses dotted keys, e.g. ``{"train.epochs": 5}``.
    """
    data: dict[str, Any] = {}
    source = "the default config"
    if path is not None:
        path = config_path(path)
        source = str(path)
        loaded = read_yaml(path, "config file")
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    if overrides:
        source += " with overrides"
    try:
        return ACMLConfig.model_validate(apply_overrides(data, overrides or {}))
    except ValidationError as err:
        raise ValueError(f"invalid configuration ({source}): {validation_summary(err)}") from None


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; a missing, unreadable or malformed file is a one-line error naming it."""
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory, not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def validation_summary(err: ValidationError) -> str:
    """Pydantic's errors as one line: ``train.batch_size: Input should be greater than 0; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in err.errors())


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted-path values (``{"train.epochs": 5}``) in a nested config mapping, in place."""
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        if not all(keys):
            raise ValueError(f"bad config key {dotted!r}: expected dotted names like train.epochs")
        node = data
        for depth, key in enumerate(keys[:-1]):
            if node.get(key) is None:  # absent, or left empty in YAML (`train:`)
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise ValueError(
                    f"cannot set {dotted!r}: {'.'.join(keys[: depth + 1])} is "
                    f"{type(node).__name__} {node!r}, not a section"
                )
        node[keys[-1]] = value
    return data


def packaged_config_names() -> list[str]:
    """Names of the configs shipped inside the package (``demo``, ``nmr``, ``study``)."""
    return sorted(p.stem for p in (Path(__file__).parent / "configs").glob("*.yaml"))


def config_path(value: str | Path) -> Path:
    """The YAML file `value` names: a path, or a bare packaged config name (``--config nmr``).

    A file of that name in the working directory wins, so a user's own ``./demo`` is never
    shadowed; a bare name that is neither is a one-line error listing the packaged names.
    """
    path = Path(value)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    if path.name in packaged_config_names():
        return packaged_config(path.name)
    raise FileNotFoundError(
        f"config file not found: {value} (nor a packaged config: {', '.join(packaged_config_names())})"
    )


def packaged_config(name: str) -> Path:
    """Path of a YAML config shipped inside the package (e.g. ``demo``)."""
    path = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no packaged config named {name!r} ({path})")
    return path
