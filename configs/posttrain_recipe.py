"""SFT and DPO for the paper's 7B / 72B models, starting from the CPT stage-II outputs; shared by
configs/{sft,dpo}_{7b,72b}.py. The paper does not publish its SFT/DPO hyper-parameters; ours come
from published open recipes:

- SFT (Tulu 2, Ivison et al. 2023; Zephyr-7B-beta's alignment-handbook recipe): lr 2e-5 for 7B,
  1e-5 for 70B-class, 2 epochs, linear warmup 3% then cosine, no weight decay, AdamW b2 0.999,
  sequences packed to 4096 tokens (Qwen2's pretraining length; non-Latin scripts need the room),
  128 rows per step;
- DPO (Zephyr-7B-beta; Tulu 2 DPO): beta 0.1, lr 5e-7, 1 epoch, warmup 10% then cosine, sigmoid
  loss, reference log-probs precomputed once from the SFT model (one model in HBM), 128 rows of
  4096 tokens per step, up to 2 pairs per row.
Meshes are the CPT stage's (proven by `python -m marco_jax.aot`, which compiles these configs'
own SFT / DPO steps).
"""

BUCKET = "gs://YOUR_BUCKET/marco"
SIZES = {  # preset, TPU slice, in-slice mesh (data, fsdp, tensor), SFT lr
    "7b": ("qwen2-7b", "v5p-128", (1, -1, 1), 2e-5),
    "72b": ("qwen2-72b", "v5p-512", (1, 64, 4), 1e-5),
}


def _common(base_module, size: str):
    preset, topology, mesh, _ = SIZES[size]
    c = base_module.get_base_config()
    c.model.preset = preset
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    # Save the layers' weight matmuls, recompute the rest: 16-18% fewer FLOPs per step than full
    # remat, 26-52 GiB of a v5p chip's 95 (AOT-checked, README's Post-training table).
    c.model.remat_policy = "dots_with_no_batch_dims"
    c.model.attention_impl = "auto"  # splash on TPU, cuDNN on GPU (bf16), XLA elsewhere
    c.topology = topology
    c.mesh.ici.data, c.mesh.ici.fsdp, c.mesh.ici.tensor = mesh
    c.data.seq_len = 4096
    c.data.global_batch_size = 128
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.0
    c.train.loss_chunk = 512
    c.train.log_every = 10
    c.checkpoint.every = 500
    c.checkpoint.keep = 2
    return c


def sft_config(base_module, size: str):
    c = _common(base_module, size)
    c.train.objective = "sft"
    c.optim.peak_lr = SIZES[size][3]
    c.optim.warmup_ratio = 0.03
    c.train.epochs = 2
    c.data.sft_files = (f"{BUCKET}/sft/*.jsonl",)
    c.data.on_bad_record = "skip"  # counted by reason in report.json
    c.train.init_from = f"{BUCKET}/runs/cpt_{size}_stage2"
    c.train.workdir = f"{BUCKET}/runs/sft_{size}"
    return c


def dpo_config(base_module, size: str):
    c = _common(base_module, size)
    c.train.objective = "dpo"
    c.optim.peak_lr = 5e-7
    c.optim.warmup_ratio = 0.1
    c.train.epochs = 1
    c.dpo.train_file = f"{BUCKET}/dpo/pairs-*.jsonl.gz"
    c.dpo.beta = 0.1
    c.dpo.loss = "sigmoid"
    c.dpo.reference = "precomputed"
    c.dpo.pairs_per_row = 2
    c.data.on_bad_record = "skip"
    c.train.init_from = f"{BUCKET}/runs/sft_{size}"
    c.train.workdir = f"{BUCKET}/runs/dpo_{size}"
    return c
