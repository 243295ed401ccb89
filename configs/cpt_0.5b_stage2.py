"""Marco-LLM continual pretraining, Qwen2-0.5B, stage 2: the recipe in configs/cpt_recipe.py."""

from marco_jax.config import load_sibling


def get_config():
    base = load_sibling(__file__, "base")
    return load_sibling(__file__, "cpt_recipe").cpt_config(base, "0.5b", 2)
