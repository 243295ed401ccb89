"""The paper's base-model evaluation suite (../shared/MARCO_PAPER.md, "Evaluation suite"):
split, shots and metric per benchmark, plus the chat models' any-to-any FLORES translation (42
directions), MGSM, XNLI and CMMLU.

    python -m marco_jax.evaluate --config configs/eval_base_suite.py --checkpoint DIR --out DIR

data_root must hold the full benchmarks in their published layouts, under the loaders' default
paths (or set each task's `path`): benchmarks/{ceval,agieval,arc,mmlu,xcopa,mmmlu,xstorycloze,
tydiqa_goldp,belebele,flores200,wmt16,mgsm,xnli,cmmlu}. A FLORES-200 SentencePiece model (the one
sacrebleu's tokenize="flores200" downloads) adds spBLEU when `spm_model` is set below.
"""

import ml_collections

# Languages of the paper's 29 that each benchmark covers.
XCOPA = ["id", "it", "th", "tr", "vi", "zh"]  # the paper's 6
XSTORYCLOZE = ["en", "ru", "zh", "es", "ar", "id"]  # 6
MMMLU = ["ar", "bn", "de", "es", "fr", "id", "it", "ja", "ko", "pt", "zh", "sw", "hi", "yo"]
TYDIQA = ["en", "ar", "bn", "fi", "id", "ko", "ru", "sw", "te"]
PAPER_28 = ["zh", "ar", "de", "es", "fr", "ko", "ja", "pt", "tr", "bn", "he", "id", "it", "ms",
            "nl", "pl", "ru", "th", "uk", "ur", "vi", "cs", "el", "hu", "kk", "ro", "az", "ne"]
ANY_TO_ANY = ["zh", "ja", "ko", "ar", "de", "fr", "es"]  # 7 languages -> 42 directions
SPM_MODEL = ""  # e.g. "/data/flores200sacrebleuspm" for spBLEU


def get_config():
    c = ml_collections.ConfigDict()
    c.data_root = "../shared/data"
    c.batch_size = 16
    c.max_len = 4096  # ARC 25-shot and AGIEval 5-shot (LSAT passages) prompts are long
    c.length_buckets = (256, 512, 1024, 2048, 4096)
    c.limit = 0
    c.prompts_saved = 3
    c.dtype = "bfloat16"
    c.tasks = [
        {"name": "ceval", "split": "val", "shots": 5},
        {"name": "agieval", "shots": 5},
        {"name": "arc", "subset": "ARC-Challenge", "split": "Test", "shots": 25},
        {"name": "mmlu", "split": "test", "shots": 5},
        {"name": "xcopa", "languages": XCOPA, "split": "val", "shots": 5},
        {"name": "mmmlu", "languages": MMMLU, "shots": 5},
        {"name": "xstorycloze", "languages": XSTORYCLOZE, "shots": 5},
        {"name": "tydiqa", "languages": TYDIQA, "split": "dev", "shots": 1},
        {"name": "belebele", "languages": ["en"] + PAPER_28, "shots": 1},
        {"name": "flores", "languages": PAPER_28, "split": "devtest", "shots": 1,
         "spm_model": SPM_MODEL},
        {"name": "wmt16", "pairs": ["de-en", "ro-en", "tr-en"], "shots": 1,
         "spm_model": SPM_MODEL},
        {"name": "flores_any", "languages": ANY_TO_ANY, "split": "devtest", "shots": 1,
         "spm_model": SPM_MODEL},
        {"name": "mgsm", "languages": ["en", "bn", "de", "es", "fr", "ja", "ru", "sw", "th",
                                       "zh"], "shots": 0},
        {"name": "xnli", "languages": ["ar", "de", "el", "en", "es", "fr", "ru", "th", "tr",
                                       "ur", "vi", "zh"], "shots": 0},
        {"name": "cmmlu", "split": "test", "shots": 5},
    ]
    return c
