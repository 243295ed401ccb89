"""Marco-LLM SFT, Qwen2-7B: the recipe in configs/posttrain_recipe.py."""

from marco_jax.config import load_sibling


def get_config():
    base = load_sibling(__file__, "base")
    return load_sibling(__file__, "posttrain_recipe").sft_config(base, "7b")
