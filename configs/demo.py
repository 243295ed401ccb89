"""The embedded demo, stage 1: continual pretraining of the tiny base from `configs/demo_base.py`
(it knows English and Chinese) with the stage-I mixture over all 29 languages of the package's
sample corpus, in a few minutes on two CPU cores.

    python -m marco_jax.train --config configs/demo_base.py --workdir runs/demo_base
    python -m marco_jax.train --config configs/demo.py --workdir runs/demo \
        [--config.train.init_from=runs/demo_base]

Held-out loss per task (data.eval_fraction of every language's documents, never trained on) is
logged as eval_loss/web.<lang>; loss_curve.png plots it per language group: the base languages
(English, Chinese) watched for forgetting, the added high-resource and low-resource languages
expected to fall. Writes checkpoints/, tensorboard/, metrics.jsonl and loss_curve.png under the
workdir. A real run sets train.init_from to a converted Qwen2 (see configs/cpt_*_stage1.py).
"""

from marco_jax.config import load_sibling


def get_config():
    c = load_sibling(__file__, "demo_base").get_config()
    # The base run's workdir (its latest step's params; the optimizer starts afresh), relative to
    # the current directory as the README's commands run it.
    c.train.init_from = "runs/demo_base"

    c.data.mixture = "demo"  # stage-I group shares over every task of the sample corpus
    c.data.shares = {}  # the mixture's own shares: all 29 languages, bitext, knowledge, synthetic
    c.data.seed = 1  # another draw of training documents than stage 0's

    c.optim.peak_lr = 2e-3  # tiny models need rates far above the CPT ones (1e-5, 6e-6)
    c.optim.warmup_steps = 10

    c.train.steps = 100
    c.train.eval_every = 20
    c.eval.batches = 16  # the same held-out rows every eval; enough to reach most languages
    c.checkpoint.every = 100
    return c
