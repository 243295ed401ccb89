"""The one experiment schema: every section, every key, its type and its default, in one place.

Config files (configs/*.py) start from `configs/base.py` (an ml_collections ConfigDict made from
these defaults) and edit it; `marco_jax.config.load` validates the result once into these frozen
dataclasses. Library code reads typed attributes only, never `.get(key, default)`.
Map-valued keys (`model.overrides`, `data.shares`, `data.task_sources`, `mesh.ici`, `mesh.dcn`)
are settable from the command line as `k=v,k=v` or one entry at a time
(`--config.data.task_sources.web.en=gs://b/en/*.jsonl`: everything after the map's own path is
the key, so task names may contain dots).
"""

from __future__ import annotations

import dataclasses
from typing import Any


def _map(**defaults: Any) -> Any:
    return dataclasses.field(default_factory=lambda: dict(defaults))


@dataclasses.dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"  # a key of marco_jax.model.config.PRESETS
    hf_config: str = ""  # a HF config.json (or its directory): overrides the preset's architecture
    overrides: dict[str, Any] = _map()  # Qwen2Config fields, e.g. num_hidden_layers=4
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype: bfloat16 on TPU/GPU, float32 is faster on CPU
    # "" (the compute dtype) | bfloat16 | ...: the Linear / lm-head matmul operands, accumulated in
    # fp32; float32 + bfloat16 here runs the matmuls on AMX CPUs (marco_jax/model/matmul.py)
    matmul_dtype: str = ""
    remat_policy: str = "none"  # none | full | dots | dots_with_no_batch_dims | save_qkv_proj
    scan_layers: bool = True
    # auto (splash on TPU, cudnn on GPU in bf16, xla on CPU) | xla | dot_product_attention |
    # splash | cudnn; decoding with a KV cache always uses xla (marco_jax/model/attention.py)
    attention_impl: str = "xla"
    # float32 | bfloat16: the lm head's logits in the training losses (bfloat16 halves the
    # head's HBM traffic, as MaxText and transformers do in bf16; the softmax math stays fp32)
    logits_dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class MeshSection:
    # In-slice (ICI) sizes per axis; -1 means "the rest of the devices". DCN sizes are the
    # across-slice factors (multi-slice); their product is the number of slices.
    ici: dict[str, int] = _map(data=1, fsdp=-1, tensor=1)
    dcn: dict[str, int] = _map(data=1, fsdp=1, tensor=1)


@dataclasses.dataclass(frozen=True)
class DataSection:
    # A registered mixture or seqio Task/Mixture name (see marco_jax.data.mixtures / seqio_feed).
    mixture: str = "demo"
    # Python modules imported before the mixture is resolved: a user's seqio Task registrations.
    modules: tuple[str, ...] = ()
    seq_len: int = 256
    global_batch_size: int = 8
    seed: int = 0
    temperature: float = 3.0
    sources_dir: str = ""  # root of local/gs:// shards; empty: the package's sample corpus
    task_sources: dict[str, str] = _map()  # task name -> path/glob, overrides the root
    shares: dict[str, float] = _map()  # group -> token share, overrides the mixture's
    pool_sizes: str = ""  # "paper" | "sources" (stats.json); "": the mixture's default
    packing_lookahead: int = 8  # documents held back per row for first-fit packing
    sampler_block_size: int = 4096
    eval_fraction: float = 0.0  # held-out tail of every task for per-language eval loss
    estimate_docs: int = 64  # documents read to estimate tokens/doc when stats.json is absent
    seqio_split: str = "train"  # split read from seqio Tasks that are not ours
    on_bad_record: str = "error"  # error | skip (skipped records are counted by reason)
    prefetch: int = 2  # batches prepared ahead by a background thread (0: none)
    # SFT / DPO sets (read whole, shuffled per epoch; local or gs:// paths or globs). Empty
    # sft_files: the package's sample chat data.
    sft_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()  # held-out SFT conversations / DPO pairs
    languages: tuple[str, ...] = ()  # per-language figures for these (empty: the paper's 29)
    truncation: str = "drop_turns"  # SFT: drop_turns (whole trailing exchanges) | none


@dataclasses.dataclass(frozen=True)
class DPOSection:
    train_file: str = ""  # preference pairs (jsonl[.gz], local or gs://; a glob)
    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid | robust | hinge | ipo
    label_smoothing: float = 0.0  # conservative DPO (sigmoid / robust)
    sft_weight: float = 0.0  # weight of an NLL term on the chosen answer
    # precomputed: reference log-probs computed once before training and stored beside the data
    # (one model in memory); model: a frozen reference copy on the fly; none: reference-free.
    reference: str = "precomputed"
    reference_logps_dir: str = ""  # where precomputed log-probs go ("" beside the data)
    pairs_per_row: int = 4
    truncation: str = "keep_start"  # keep_start | none


@dataclasses.dataclass(frozen=True)
class OptimSection:
    peak_lr: float = 1e-5
    end_lr_ratio: float = 0.1
    warmup_steps: int = 100
    warmup_ratio: float = 0.0  # when > 0: warmup = ceil(ratio x steps) (epoch-based recipes)
    schedule: str = "cosine"  # cosine | linear | constant
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    grad_accum_steps: int = 1
    decay_embeddings: bool = True  # weight decay on embedding/lm_head (never biases, norms)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    objective: str = "lm"  # lm (continual pretraining) | sft | dpo
    steps: int = 1000
    epochs: int = 0  # SFT/DPO: when > 0, steps = the batches of this many epochs
    seed: int = 0
    # A converted checkpoint (model_config.json + params/) or a training workdir (its latest
    # step's params; the optimizer starts afresh). Empty: random init.
    init_from: str = ""
    log_every: int = 10
    eval_every: int = 0
    max_bad_steps: int = 10  # NaN/Inf steps skipped before the run stops
    workdir: str = ""  # default for --workdir (local or gs://)
    # Per-device peak FLOP/s for MFU; 0: the published chip figure, or on CPU a measured rate.
    peak_flops: float = 0.0
    loss_chunk: int = 256  # sequence chunk of the lm-head/cross-entropy (0: whole sequence)
    # Persistent JAX compilation cache (marco_jax/compile_cache.py): "auto" = a per-user
    # directory, a path (local or gs://), or "" for none. Restarts load the compiled step.
    compilation_cache_dir: str = "auto"


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int = 500
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class EvalSection:
    batches: int = 4  # held-out batches per eval (the same ones every time)


@dataclasses.dataclass(frozen=True)
class Experiment:
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    optim: OptimSection = dataclasses.field(default_factory=OptimSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    dpo: DPOSection = dataclasses.field(default_factory=DPOSection)
    # The gcloud TPU type this config is proven to fit (`python -m marco_jax.aot`); "" for none.
    topology: str = ""

    def replace(self, **sections: Any) -> Experiment:
        return dataclasses.replace(self, **sections)


# Accepted values of the string-enum keys, checked at load.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.remat_policy": ("none", "full", "dots", "dots_with_no_batch_dims", "save_qkv_proj"),
    "model.attention_impl": ("auto", "xla", "dot_product_attention", "splash", "cudnn"),
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.matmul_dtype": ("", "float32", "bfloat16", "float16"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "data.pool_sizes": ("", "paper", "sources"),
    "data.on_bad_record": ("error", "skip"),
    "data.truncation": ("drop_turns", "none"),
    "train.objective": ("lm", "sft", "dpo"),
    "dpo.loss": ("sigmoid", "robust", "hinge", "ipo"),
    "dpo.reference": ("precomputed", "model", "none"),
    "dpo.truncation": ("keep_start", "none"),
}
# Lower bounds of numeric keys (inclusive), checked at load.
MINIMA: dict[str, float] = {
    "data.seq_len": 1, "data.global_batch_size": 1, "data.temperature": 1e-9,
    "data.packing_lookahead": 1, "data.sampler_block_size": 1, "data.eval_fraction": 0.0,
    "data.estimate_docs": 1, "data.prefetch": 0, "optim.peak_lr": 0.0, "optim.warmup_steps": 0,
    "optim.warmup_ratio": 0.0,
    "optim.grad_accum_steps": 1, "optim.end_lr_ratio": 0.0, "optim.weight_decay": 0.0,
    "optim.clip_norm": 0.0, "train.steps": 1, "train.log_every": 1, "train.eval_every": 0,
    "train.max_bad_steps": 1, "train.peak_flops": 0.0, "train.loss_chunk": 0,
    "checkpoint.every": 0, "checkpoint.keep": 1, "eval.batches": 1, "train.epochs": 0,
    "dpo.beta": 1e-9, "dpo.label_smoothing": 0.0, "dpo.sft_weight": 0.0, "dpo.pairs_per_row": 1,
}
MAXIMA: dict[str, float] = {"data.eval_fraction": 0.999999}
