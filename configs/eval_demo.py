"""A small multilingual evaluation suite over the real benchmark slices in ../shared/data
(see its README): multiple choice, QA, maths and translation in a handful of languages.

    python -m marco_jax.evaluate --config configs/eval_demo.py --checkpoint DIR --limit 20

data_root is relative to the repository root (the folder above configs/). Every task entry is
{name, [label], <options of its loader>}; see marco_jax/evals/tasks/ for the options.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.data_root = "../shared/data"
    c.batch_size = 8
    c.max_len = 2048
    c.length_buckets = (256, 512, 1024, 2048)
    c.limit = 0  # items per subset; --limit overrides
    c.prompts_saved = 3
    c.dtype = ""  # the checkpoint's own compute dtype
    c.tasks = [
        {"name": "xcopa", "languages": ["zh", "id", "sw"], "shots": 5},
        {"name": "belebele", "languages": ["en", "de"], "shots": 1},
        {"name": "xnli", "languages": ["de", "zh"], "shots": 0},
        {"name": "cmmlu", "split": "dev", "shots": 4},
        {"name": "agieval", "subtasks": ["logiqa-en", "gaokao-geography"], "shots": 3},
        {"name": "tydiqa", "split": "train-slice", "languages": ["en", "ko", "sw"], "shots": 1},
        {"name": "mgsm", "languages": ["en", "zh"], "shots": 2, "max_new_tokens": 32},
        {"name": "flores", "split": "dev", "languages": ["kk", "zh"], "shots": 1,
         "max_new_tokens": 64},
        {"name": "flores_any", "split": "dev", "languages": ["zh", "ja", "de"], "shots": 1,
         "max_new_tokens": 64},
    ]
    return c
