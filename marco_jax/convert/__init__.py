"""Hugging Face Qwen2 checkpoints <-> our checkpoint (`model_config.json` + Orbax `params/`).

- `checkpoint`: save_params / load_params (onto any mesh) / load_model.
- `hf_to_ours.convert_hf_to_orbax`, `ours_to_hf.export_orbax_to_hf`: streaming conversion.
- `mapping`: the HF-name <-> param-path table. CLI: `python -m marco_jax.convert`.

Kept free of imports so `mapping` can be used without pulling in Orbax.
"""
