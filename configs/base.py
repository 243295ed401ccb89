"""The shared starting point of every experiment config: the schema's defaults as an
ml_collections ConfigDict (`marco_jax/config/schema.py` holds every key, type and default).

Experiment files call `get_base_config()` and edit it. Anything can be overridden on the command
line: `python -m marco_jax.train --config configs/x.py --config.optim.peak_lr=3e-5`; maps as
`--config.data.shares=english=0.4,chinese=0.2,...` or one entry at a time
(`--config.data.task_sources.web.en=gs://bucket/en/*.jsonl`). Unknown keys and wrong types are
rejected at load with the key's name.
"""

import dataclasses

import ml_collections

from marco_jax.config.schema import Experiment


def get_base_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dataclasses.asdict(Experiment()))


def get_config() -> ml_collections.ConfigDict:
    return get_base_config()
