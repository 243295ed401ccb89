"""The paper's two-stage continual-pretraining recipe, shared by configs/cpt_<size>_stage<n>.py.

From the paper (../shared/MARCO_PAPER.md): stage I 160B tokens at peak LR 1e-5 with the stage-I
group shares; stage II 140B tokens at 6e-6 with the stage-II shares, starting from stage I's final
checkpoint; an Adam-family optimizer. The paper does not publish batch size, sequence length,
warmup or schedule shape; our choices, for every size unless the size file says otherwise:

- sequence length 4096 (Qwen2's pretraining length before its long-context phase);
- global batch 1024 rows x 4096 = 4.19M tokens for 7B/72B, 512 x 4096 = 2.10M for 0.5B/1.5B
  (the usual ~2-4M-token batches at these sizes), so steps = tokens / (batch x length);
- AdamW b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1, clip 1.0;
- linear warmup of 500 steps (stage I) / 200 (stage II) -- continued training re-warms the
  moments from zero -- then cosine decay to 10% of peak over the stage;
- params fp32, compute bf16 (logits stored in bf16); each layer's weight matmuls are saved for
  the backward pass and the rest is rematerialised (REMAT, AOT-checked per size).
"""

import math

STAGES = {
    1: {"tokens": 160e9, "peak_lr": 1e-5, "warmup": 500, "mixture": "marco_stage1"},
    2: {"tokens": 140e9, "peak_lr": 6e-6, "warmup": 200, "mixture": "marco_stage2"},
}
SEQ_LEN = 4096
SIZES = {  # preset, global batch (rows), TPU slice the step is AOT-checked for
    "0.5b": ("qwen2-0.5b", 512, "v5p-16"),
    "1.5b": ("qwen2-1.5b", 512, "v5p-32"),
    "7b": ("qwen2-7b", 1024, "v5p-128"),
    "72b": ("qwen2-72b", 1024, "v5p-512"),
}
# Per size, set by the AOT fit check (`python -m marco_jax.aot`, bench/bench_aot_fit.py): gradient
# accumulation steps (micro-batch rows per chip = batch / (data x fsdp) / accum), the remat policy
# and the in-slice mesh (data, fsdp, tensor). Every size spends the HBM splash attention frees on
# saving the layers' weight matmuls (`dots_with_no_batch_dims`: no forward recompute of them) at
# 16 / 8 / 4 / 2 rows per chip per micro-step (0.5B / 1.5B / 7B / 72B): fewer FLOPs per step than
# full remat, still inside the 95 GiB of a v5p chip (72B at 4 rows: 95.2 GiB, does not fit). See
# the README's Scale section.
ACCUM = {"0.5b": 4, "1.5b": 4, "7b": 4, "72b": 8}
REMAT = dict.fromkeys(("0.5b", "1.5b", "7b", "72b"), "dots_with_no_batch_dims")
MESH_ICI = {"0.5b": (1, -1, 1), "1.5b": (1, -1, 1), "7b": (1, -1, 1), "72b": (1, 64, 4)}
BUCKET = "gs://YOUR_BUCKET/marco"  # edit, or override each path on the command line


def stage_steps(stage: int, global_batch: int, seq_len: int = SEQ_LEN) -> int:
    return math.ceil(STAGES[stage]["tokens"] / (global_batch * seq_len))


def cpt_config(base_module, size: str, stage: int):
    preset, batch, topology = SIZES[size]
    s = STAGES[stage]
    c = base_module.get_base_config()
    c.model.preset = preset
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat_policy = REMAT[size]
    # Per platform: the Pallas splash kernel on TPU (7B v5p-128: 22.35 vs 47.50 GiB/chip with
    # dot_product_attention, by the AOT compiler), cuDNN on GPU in bf16, XLA elsewhere.
    c.model.attention_impl = "auto"
    # The lm head writes its logits in bf16 (MaxText's and transformers' bf16 behaviour; the
    # softmax math stays fp32): halves the head's HBM traffic, the largest non-layer item of the
    # step (7B: see the README's bytes comparison with MaxText).
    c.model.logits_dtype = "bfloat16"
    c.topology = topology
    c.mesh.ici.data, c.mesh.ici.fsdp, c.mesh.ici.tensor = MESH_ICI[size]

    c.data.mixture = s["mixture"]
    c.data.sources_dir = f"{BUCKET}/shards"
    c.data.seq_len = SEQ_LEN
    c.data.global_batch_size = batch
    c.data.eval_fraction = 0.001  # held-out documents per task for the per-language eval loss

    c.optim.peak_lr = s["peak_lr"]
    c.optim.warmup_steps = s["warmup"]
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.1
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 1.0
    c.optim.grad_accum_steps = ACCUM[size]

    c.train.steps = stage_steps(stage, batch)
    c.train.log_every = 10
    c.train.eval_every = 1000
    c.train.loss_chunk = 512
    c.eval.batches = 8
    # Stage I continues the converted Qwen2 weights; stage II continues stage I's final state.
    c.train.init_from = (f"{BUCKET}/qwen2-{size}" if stage == 1
                         else f"{BUCKET}/runs/cpt_{size}_stage1")
    c.train.workdir = f"{BUCKET}/runs/cpt_{size}_stage{stage}"
    c.checkpoint.every = 1000
    c.checkpoint.keep = 3
    return c
