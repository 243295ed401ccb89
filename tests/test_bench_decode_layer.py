"""bench/bench_decode_layer.py, the in-process A/B of the fused decode layer: its two sides really
differ (each compiled under its own flag) and decode the same tokens; wrong input is one line,
exit status 2."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from marco_jax.model.config import get_preset
from marco_jax.model.native import kernels_available
from marco_jax.model.qwen2 import init_model

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_decode_layer.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_decode_layer", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH.parent))
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not kernels_available(), reason="no C++ compiler for the CPU kernels")
def test_the_sides_are_fused_and_unfused_and_agree(monkeypatch):
    module = _bench_module()
    cfg = get_preset("tiny", dtype="float32", param_dtype="float32", vocab_size=512,
                     hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
    model = init_model(cfg, seed=0)
    tokens = np.arange(2 * 9, dtype=np.int32).reshape(2, 9) % 512
    mask = np.ones_like(tokens)
    traced = []
    real = module.gen._decode

    def spy(*args, **kwargs):
        traced.append(os.environ.get("MARCO_FUSED_DECODE_LAYER"))
        return real(*args, **kwargs)

    monkeypatch.setattr(module.gen, "_decode", spy)
    calls = module.compiled_sides(model, tokens, mask, new_tokens=5)
    assert traced == ["1", "0"]  # each side traced once, under its own flag
    assert "MARCO_FUSED_DECODE_LAYER" not in os.environ
    np.testing.assert_array_equal(calls["fused"](), calls["unfused"]())


@pytest.mark.parametrize("args, says", [
    (["--shapes", "huge"], "--shapes 'huge': expected a comma list of vocab-heavy, layer-heavy"),
    (["--batches", "0"], "expected batches, lengths >= 1 and rounds >= 2"),
    (["--param-dtypes", "int8"], "--param-dtypes 'int8': expected a comma list of float32"),
    (["--rounds", "1"], "expected batches, lengths >= 1 and rounds >= 2"),
])
def test_wrong_input_is_one_line_and_exit_2(args, says):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MARCO_HOST_MALLOC": "default"}
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and says in err[0], done.stderr
