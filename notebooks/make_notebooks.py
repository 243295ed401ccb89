# ruff: noqa: E501  (notebook cell sources are kept as written in the cells)
"""Writes quickstart.ipynb and cpt_on_tpu.ipynb from the cell sources below (edit here, rerun:
`python notebooks/make_notebooks.py`). Cells tagged `tpu-only` or `slow` are skipped in CI
(tests/test_notebooks.py)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
INSTALL = '''# Colab: install marco_jax from its git repository (skipped when it is already importable,
# e.g. in a clone with `pip install -e ".[convert,eval]"`). REPO: the git URL of your copy of
# the repository (or set MARCO_JAX_REPO before starting the runtime).
import importlib.util, os, subprocess, sys
REPO = os.environ.get("MARCO_JAX_REPO", "")
if importlib.util.find_spec("marco_jax") is None:
    if not REPO:
        raise SystemExit("marco_jax is not installed: set REPO in this cell to the git URL of "
                         "your marco_jax repository (or pip install it first)")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "marco_jax[convert,eval] @ git+" + REPO])'''

SETUP = '''import os, json, subprocess, sys, tempfile
from pathlib import Path
import jax
from IPython.display import Image, display
from marco_jax.config import Experiment, to_experiment
import dataclasses

# Size knob: training steps of continual pretraining (CI sets a handful).
STEPS = int(os.environ.get("MARCO_NOTEBOOK_STEPS", "200"))
WORK = Path(os.environ.get("MARCO_NOTEBOOK_DIR") or tempfile.mkdtemp(prefix="marco_nb_"))
print(f"{jax.device_count()} {jax.devices()[0].platform} device(s); {STEPS} CPT steps; work dir {WORK}")

def run(*args):
    """A marco_jax CLI in a subprocess, its output shown here."""
    out = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    print(out.stdout[-2000:], out.stderr[-2000:] if out.returncode else "")
    assert out.returncode == 0, f"{args[0]} exited {out.returncode}"'''

HF_TINY = '''# A tiny Qwen2 in Hugging Face format (random weights, the real 151,936-token vocabulary),
# standing in for a downloaded checkpoint such as Qwen/Qwen2-0.5B.
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
torch.manual_seed(0)
hf_config = Qwen2Config(vocab_size=151936, hidden_size=128, intermediate_size=352,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        tie_word_embeddings=True, max_position_embeddings=4096)
Qwen2ForCausalLM(hf_config).save_pretrained(WORK / "hf_tiny", safe_serialization=True)
run("marco_jax.convert", "hf-to-orbax", "--hf", str(WORK / "hf_tiny"), "--out", str(WORK / "tiny_orbax"))'''

CPT = '''# Continual pretraining with the stage-I mixture (group token shares of the paper) over the
# corpus shipped in the package: 29 languages, bitext, knowledge, synthetic documents.
# mesh fsdp=-1: parameters and batches sharded over every device of this runtime.
from marco_jax.train import hooks as H
from marco_jax.train.loop import train

def experiment(**sections):
    tree = dataclasses.asdict(Experiment())
    for section, values in sections.items():
        tree[section].update(values)
    return to_experiment(tree)

class EvalAtStart(H.HeldOutEval):
    """The held-out eval once before the first step: the starting model's figures."""
    def on_start(self, run):
        super().on_start(run)
        if run.step == 0:
            super().after_step(run, {})
            run.eval_it.set_state(self.start_state)  # the loop's eval sees the same batches
            run.clock_reset = False  # the first step still counts as the compile step
    def after_step(self, run, sums):
        pass  # the loop's own HeldOutEval evaluates during training

batch = max(4, jax.device_count())
cpt = experiment(
    model=dict(hf_config=str(WORK / "hf_tiny" / "config.json"), dtype="float32"),
    mesh=dict(ici=dict(data=1, fsdp=-1, tensor=1)),
    data=dict(mixture="demo", seq_len=128, global_batch_size=batch, eval_fraction=0.15),
    optim=dict(peak_lr=2e-3, warmup_steps=min(10, STEPS), weight_decay=0.01),
    train=dict(steps=STEPS, init_from=str(WORK / "tiny_orbax"), log_every=max(1, STEPS // 20),
               eval_every=max(1, STEPS // 4), loss_chunk=32),
    eval=dict(batches=8), checkpoint=dict(every=STEPS, keep=1))
summary = train(cpt, str(WORK / "cpt"), progress=True,
                extra_hooks=[EvalAtStart(cpt.train.eval_every, cpt.eval.batches)])
print(summary["status"], summary["step"], "train loss", summary.get("first_loss"), "->", summary.get("last_loss"))'''

PLOT = '''# Train loss, and held-out loss per language group (documents never trained on).
from marco_jax.train.metrics import eval_loss_by_group
display(Image(summary["loss_curve"]))
records = {}
for line in (WORK / "cpt" / "metrics.jsonl").read_text().splitlines():
    rec = json.loads(line)
    records.setdefault(rec["step"], {}).update(rec)
for group, points in eval_loss_by_group(records).items():
    print(f"{group:34s} step {points[0][0]:>4}: {points[0][1]:6.2f}   step {points[-1][0]:>4}: {points[-1][1]:6.2f}")'''

SFT = '''# Multilingual SFT (ChatML, loss on assistant tokens only) on the shipped chat data
# (marco_jax/sample_data/sft/), continuing the CPT run.
from marco_jax.train.posttrain import train_sft
sft = experiment(
    model=dict(hf_config=str(WORK / "hf_tiny" / "config.json")),
    mesh=dict(ici=dict(data=1, fsdp=-1, tensor=1)),
    data=dict(seq_len=256, global_batch_size=max(8, jax.device_count())),
    optim=dict(peak_lr=3e-3, warmup_ratio=0.1, weight_decay=0.0),
    train=dict(objective="sft", steps=max(2, STEPS // 4), init_from=str(WORK / "cpt"),
               log_every=max(1, STEPS // 20), loss_chunk=64),
    checkpoint=dict(every=max(2, STEPS // 4), keep=1))
sft_summary = train_sft(sft, str(WORK / "sft"), progress=True)
print(sft_summary["status"], sft_summary["step"], "loss", sft_summary.get("first_loss"), "->", sft_summary.get("last_loss"))'''

EVAL = '''# A small multilingual task: XCOPA-style items written here (premise, which alternative is
# the cause/effect), scored by log-likelihood of each alternative. A model this small and this
# briefly trained sits near chance (0.5); the point is the path, which is the same for a 7B.
from marco_jax.checkpoint import load_model
from marco_jax.data.tokenizer import get_tokenizer
from marco_jax.infer.score import score_requests
ITEMS = [  # (language, premise, connective, alternative 1, alternative 2, correct)
    ("en", "The man broke his toe.", "because", "He dropped a hammer on his foot.", "He got a hole in his sock.", 0),
    ("en", "The girl was thirsty.", "so", "She drank a glass of water.", "She closed the window.", 0),
    ("de", "Der Boden war nass.", "weil", "Es hatte geregnet.", "Die Sonne schien.", 0),
    ("fr", "La lampe s'est éteinte.", "parce que", "L'ampoule était grillée.", "Le livre était ouvert.", 0),
    ("es", "El niño tenía frío.", "así que", "Se puso un abrigo.", "Abrió la nevera.", 0),
    ("id", "Jalanan macet sekali.", "karena", "Ada kecelakaan di depan.", "Burung bernyanyi di pohon.", 0),
    ("zh", "他饿了。", "所以", "他去吃饭了。", "他去睡觉了。", 0),
    ("tr", "Çiçekler soldu.", "çünkü", "Kimse onları sulamadı.", "Kitap çok ilginçti.", 0),
]
tok = get_tokenizer()
model = load_model(str(WORK / "sft"))
requests = [(tok.encode(f"{p} {c}"), tok.encode(" " + alt))
            for _, p, c, a1, a2, _ in ITEMS for alt in (a1, a2)]
scores = score_requests(model, requests, pad_id=tok.eos_id)
correct = [int(scores[2 * i + 1].logprob > scores[2 * i].logprob) == gold
           for i, (*_, gold) in enumerate(ITEMS)]
by_lang = {}
for (lang, *_), ok in zip(ITEMS, correct):
    by_lang.setdefault(lang, []).append(ok)
print("accuracy", sum(correct) / len(correct), {k: sum(v) / len(v) for k, v in by_lang.items()})'''

GENERATE = '''# Generation in three languages (greedy, KV cache), as chat turns.
from marco_jax.infer.text import generate_text
prompts = ["What is the capital of France?", "¿Cuál es la capital de España?", "中国的首都是哪里？"]
for p, out in zip(prompts, generate_text(model, tok, prompts, max_new_tokens=24, chat=True)):
    print(f"{p}\\n  -> {out!r}")'''

EXPORT = '''# Export the SFT run to a Hugging Face directory and load it with transformers: same logits.
import numpy as np
from transformers import AutoModelForCausalLM
run("marco_jax.convert", "run-to-hf", "--workdir", str(WORK / "sft"), "--out", str(WORK / "hf_out"))
hf = AutoModelForCausalLM.from_pretrained(WORK / "hf_out", torch_dtype=torch.float32).eval()
ids = tok.encode("The river carries sand and stones to the sea.")
with torch.no_grad():
    theirs = hf(torch.tensor([ids])).logits.numpy()
ours = np.asarray(model(jax.numpy.asarray([ids])))
print("max |logit difference| ours vs transformers:", float(np.max(np.abs(ours - theirs))))'''


def quickstart() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(
            "# marco_jax quickstart\n\nTiny Qwen2 from a Hugging Face checkpoint -> continual "
            "pretraining on 29 languages with the paper's stage-I mixture -> per-language-group "
            "held-out loss -> multilingual SFT -> a small multilingual eval -> generation in "
            "three languages -> back to Hugging Face. Runs on a CPU runtime in minutes and "
            "unchanged on a Colab TPU/GPU runtime (the mesh covers every device). "
            "`MARCO_NOTEBOOK_STEPS` sets the CPT length (default 200)."),
        new_code_cell(INSTALL), new_code_cell(SETUP),
        new_markdown_cell("## 1. A Hugging Face Qwen2, converted to our Orbax checkpoint"),
        new_code_cell(HF_TINY),
        new_markdown_cell("## 2. Continual pretraining (stage-I mixture)"), new_code_cell(CPT),
        new_markdown_cell("## 3. What CPT did, per language group"), new_code_cell(PLOT),
        new_markdown_cell("## 4. Multilingual SFT"), new_code_cell(SFT),
        new_markdown_cell("## 5. Evaluate"), new_code_cell(EVAL),
        new_markdown_cell("## 6. Generate"), new_code_cell(GENERATE),
        new_markdown_cell("## 7. Export to Hugging Face"), new_code_cell(EXPORT),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}})


MESH = """# The mesh over this runtime's chips (Colab TPU v2-8 / v5e-1..8, or one CPU device here):
# data x fsdp x tensor, fsdp=-1 taking every chip; params and batches are sharded over it.
from marco_jax.parallel.mesh import build_mesh
mesh = build_mesh({"data": 1, "fsdp": -1, "tensor": 1})
print(dict(mesh.shape), [d.device_kind for d in mesh.devices.flat][:8])"""

AOT = """# Will cpt_7b_stage1 fit a v5p-128 slice? The TPU compiler answers from here: it compiles the
# trainer's own sharded step for compile-only devices of the slice (minutes; needs libtpu, the
# `tpu` extra) and prints per-chip HBM, FLOPs and the implied tokens/s. Exit status 1: no fit.
configs = Path("configs") if Path("configs/cpt_7b_stage1.py").exists() else Path("/content/marco_jax/configs")
if not configs.exists():
    if not REPO:
        raise SystemExit("no configs/ here: set REPO in the first cell to the git URL of your "
                         "marco_jax repository, or run this notebook from a clone")
    subprocess.check_call(["git", "clone", "-q", "--depth", "1", REPO, "/content/marco_jax"])
run("marco_jax.aot", "--config", str(configs / "cpt_7b_stage1.py"), "--topology", "v5p-128")"""


def tagged(source: str, *tags: str) -> nbformat.NotebookNode:
    return new_code_cell(source, metadata={"tags": list(tags)})


def cpt_on_tpu() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell(
            "# Continual pretraining on a Colab TPU\n\nRuntime -> Change runtime type -> TPU. "
            "The same path as quickstart.ipynb, with the mesh over the TPU chips, bfloat16 "
            "compute, and the ahead-of-time fit check of a 7B slice. Cells tagged `tpu-only` "
            "(training on the chips) and `slow` (the 7B compile) are skipped in CI."),
        new_code_cell(INSTALL), new_code_cell(SETUP), new_code_cell(MESH),
        new_markdown_cell("## A Hugging Face Qwen2, converted"), tagged(HF_TINY, "tpu-only"),
        new_markdown_cell("## Continual pretraining on every chip"),
        tagged(CPT.replace('dtype="float32"', 'dtype="bfloat16"'), "tpu-only"),
        tagged(PLOT, "tpu-only"),
        new_markdown_cell("## Does the 7B stage-I config fit a v5p-128? (AOT, from here)"),
        tagged(AOT, "slow"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}})


if __name__ == "__main__":
    nbformat.write(quickstart(), HERE / "quickstart.ipynb")
    nbformat.write(cpt_on_tpu(), HERE / "cpt_on_tpu.ipynb")
