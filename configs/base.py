"""The shared config schema: every experiment config starts from `get_base_config()` and edits it.

Sections: model, mesh, data, optim, train, checkpoint, eval. Anything here can be overridden on the
command line: `python -m marco_jax.train --config configs/x.py --config.optim.peak_lr=3e-5`.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"  # a key of marco_jax.model.config.PRESETS
    c.model.hf_config = ""  # a HF config.json path: overrides the preset's architecture
    c.model.overrides = ml_collections.ConfigDict()  # e.g. num_hidden_layers=4
    c.model.param_dtype = "float32"
    c.model.dtype = "float32"  # bfloat16 on TPU/GPU
    c.model.remat_policy = "none"
    c.model.scan_layers = True
    c.model.attention_impl = "xla"

    c.mesh = ml_collections.ConfigDict()
    # In-slice (ICI) sizes per axis; -1 means "the rest of the devices". DCN sizes are the
    # across-slice factors (multi-slice); their product is the number of slices.
    c.mesh.ici = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    c.mesh.dcn = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
    # The gcloud TPU type this config is proven to fit (`python -m marco_jax.aot`); "" for none.
    c.topology = ""

    c.data = ml_collections.ConfigDict()
    c.data.mixture = "demo"  # a registered seqio mixture name
    c.data.seq_len = 256
    c.data.global_batch_size = 8
    c.data.seed = 0
    c.data.temperature = 3.0
    c.data.sources_dir = ""  # root of local/gs:// shards; empty: the package's sample corpus
    c.data.task_sources = ml_collections.ConfigDict()  # task name -> path/glob, overrides the root
    c.data.shares = ml_collections.ConfigDict()  # group -> token share, overrides the mixture's
    c.data.pool_sizes = ""  # "paper" | "sources" (stats.json); "": the mixture's default
    c.data.packing_lookahead = 8  # documents held back per row for first-fit packing
    c.data.sampler_block_size = 4096
    c.data.eval_fraction = 0.0  # held-out tail of every task for per-language eval loss
    c.data.estimate_docs = 64  # documents read to estimate tokens/doc when stats.json is absent

    c.optim = ml_collections.ConfigDict()
    c.optim.peak_lr = 1e-5
    c.optim.end_lr_ratio = 0.1
    c.optim.warmup_steps = 100
    c.optim.schedule = "cosine"  # cosine | linear | constant
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 1.0
    c.optim.grad_accum_steps = 1
    c.optim.decay_embeddings = True  # weight decay on embedding/lm_head (never biases, norms)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.seed = 0
    c.train.init_from = ""  # an Orbax checkpoint made by `python -m marco_jax.convert`
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.max_bad_steps = 10  # NaN/Inf steps skipped before the run stops
    c.train.workdir = ""  # default for --workdir (local or gs://)
    c.train.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0: published chip figure or,
    # on CPU, a measured fp32 matmul rate
    c.train.loss_chunk = 256  # sequence chunk of the lm-head/cross-entropy (0: whole sequence)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 500
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.eval = ml_collections.ConfigDict()
    c.eval.batches = 4
    return c
