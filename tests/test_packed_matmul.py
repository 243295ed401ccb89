"""The CPU matmul kernel on packed weights (marco_jax/model/packed_matmul.py): products against a
float64 numpy reference on every row-block remainder, padded tiles and both thread paths; what
decoding compiles; its tokens against XLA's dots; the build cache and the fallback without a
compiler."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from marco_jax.infer import generate
from marco_jax.infer.sampling import packed_greedy_tokens
from marco_jax.model.config import Qwen2Config
from marco_jax.model.native import kernels_available
from marco_jax.model.packed_matmul import (
    TILE,
    pack_kernel,
    packed_argmax_parts,
    packed_matmul,
    packed_matmul_group,
    unpack_kernel,
)
from marco_jax.model.qwen2 import init_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def kernel():
    # gcc is on every machine this project tests on; a missing kernel is a failure, not a skip.
    assert kernels_available(), "the CPU matmul kernel did not build (see the warning above)"


def _packed_product(x: np.ndarray, w: np.ndarray, contract_dims: int,
                    dtype: str = "float32") -> np.ndarray:
    packed = jax.jit(pack_kernel, static_argnums=(1, 2))(jnp.asarray(w), contract_dims, dtype)
    assert packed.tiles.dtype == dtype
    return np.asarray(jax.jit(packed_matmul)(jnp.asarray(x), packed))


# Rows: every remainder of the 8-row register block, and three 512-row panels (1100).
# (kernel shape, contract dims): layer shapes, o_proj's two contracted axes, a vocabulary that
# is not a multiple of 32 (a padded last tile), fewer than 32 outputs, one input feature.
SHAPES = [((48, 96), 1), ((96, 48), 1), ((48, 3, 16), 1), ((3, 16, 48), 2), ((40, 1000), 1),
          ((17, 7), 1), ((1, 64), 1)]


@pytest.mark.parametrize("shape, contract_dims", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 7, 8, 9, 12, 15, 16, 20, 23, 300, 1100])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_products_equal_a_float64_reference(shape, contract_dims, rows, dtype):
    """bf16 weights: the reference multiplies the bf16 values (widened exactly to float64)."""
    rng = np.random.default_rng(rows)
    w = np.asarray(jnp.asarray(rng.standard_normal(shape), dtype).astype(jnp.float32))
    k = int(np.prod(shape[:contract_dims]))
    x = rng.standard_normal((rows, k)).astype(np.float32)
    got = _packed_product(x, w, contract_dims, dtype)
    ref = x.astype(np.float64) @ w.reshape(k, -1).astype(np.float64)
    assert got.shape == (rows, *shape[contract_dims:])
    # float32 sums of k products: error bounded by k ulps of the sum of magnitudes
    bound = k * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(w.reshape(k, -1)))
    np.testing.assert_array_less(np.abs(got.reshape(rows, -1) - ref), bound + 1e-30)


def test_the_threaded_path_equals_the_single_thread_path():
    """Above 2^17 multiply-adds the tiles are shared out over XLA's thread pool: large and small
    calls of the same rows and columns agree to the bit (each tile's sums are the same code)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((384, 4000)).astype(np.float32)
    x = rng.standard_normal((64, 384)).astype(np.float32)
    whole = _packed_product(x, w, 1)  # 98M multiply-adds: threaded
    for col in (0, 2016, 3968):  # one tile each: 12k multiply-adds per row, single thread
        part = _packed_product(x[:1], w[:, col: col + TILE], 1)
        np.testing.assert_array_equal(part, whole[:1, col: col + TILE])


@pytest.mark.parametrize("rows", [1, 8, 600])
def test_a_group_call_equals_one_call_per_kernel(rows):
    """`packed_matmul_group` (one pass over several weights' tiles, threaded above 2^17
    multiply-adds) gives each kernel's products to the bit, padded tiles and 3-D outputs too."""
    rng = np.random.default_rng(rows)
    x = jnp.asarray(rng.standard_normal((rows, 96)), jnp.float32)
    kernels = [pack_kernel(jnp.asarray(rng.standard_normal(shape), jnp.float32))
               for shape in [(96, 384), (96, 2, 16), (96, 70), (96, 3000)]]
    grouped = jax.jit(packed_matmul_group)(x, kernels)
    for packed, got in zip(kernels, grouped, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.jit(packed_matmul)(x,
                                                                                         packed)))
    with pytest.raises(ValueError, match="kernels of 95 features in float32 beside 96"):
        packed_matmul_group(x, [kernels[0], pack_kernel(jnp.ones((95, 32)))])
    with pytest.raises(ValueError, match="9 kernels; expected 1..8"):
        packed_matmul_group(x, kernels * 2 + kernels[:1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pack_round_trips_and_pads_with_zeros(dtype):
    w = (np.arange(5 * 70) % 200 + 1).astype(np.float32).reshape(5, 70)  # exact in bf16 too
    packed = pack_kernel(jnp.asarray(w), dtype=dtype)
    assert packed.tiles.shape == (3, 5, TILE) and packed.out_shape == (70,)
    np.testing.assert_array_equal(np.asarray(packed.tiles, np.float32)[2, :, 6:], 0)
    np.testing.assert_array_equal(np.asarray(unpack_kernel(packed), np.float32), w)
    with pytest.raises(ValueError, match="x has 4 features, the kernel 5"):
        packed_matmul(jnp.ones((2, 4)), packed)
    with pytest.raises(ValueError, match="dtype float16; expected float32 or bfloat16"):
        pack_kernel(jnp.asarray(w), dtype=jnp.float16)


_greedy = jax.jit(packed_greedy_tokens, static_argnums=2)


def _greedy_and_reference(x: np.ndarray, w: np.ndarray, columns: int | None = None,
                          dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """(the fused kernel's tokens, numpy's argmax of the kernel's own products over the first
    `columns` columns): numpy's argmax takes the first of tied values and the first NaN."""
    packed = pack_kernel(jnp.asarray(w), dtype=dtype)
    products = np.asarray(jax.jit(packed_matmul)(jnp.asarray(x), packed))
    return (np.asarray(_greedy(jnp.asarray(x), packed, columns)),
            products[:, :columns].argmax(axis=1))


# (rows, K, N, columns): the heads' shapes; a padded last tile; columns < N (a vocab limit) cut
# inside a tile and on a tile edge; one column; two 512-row panels. Above 2^17 multiply-adds
# the kernel's workers share the tiles and their candidates are merged.
GREEDY_CASES = [(8, 128, 151936, None), (1, 384, 32000, None), (3, 64, 100, None),
                (8, 96, 5000, 4001), (5, 96, 5000, 4000), (2, 16, 70, 1), (1100, 16, 70, None)]


@pytest.mark.parametrize("rows, k, n, columns", GREEDY_CASES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_greedy_equals_the_argmax_of_the_products(rows, k, n, columns, dtype):
    rng = np.random.default_rng(n + rows)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    got, ref = _greedy_and_reference(x, w, columns, dtype)
    np.testing.assert_array_equal(got, ref)
    if columns is not None:
        assert got.max() < columns


def _one_hot_kernel(values: dict[int, float], n: int = 8192, k: int = 64) -> np.ndarray:
    w = np.zeros((k, n), np.float32)
    for column, value in values.items():
        w[0, column] = value
    return w


@pytest.mark.parametrize("values, columns, expected", [
    ({7000: 5.0, 100: 5.0, 100 + 32 * 70: 5.0, 4000: 5.0}, None, 100),  # a four-way tie
    ({6000: np.nan, 300: np.nan, 50: 9.0}, None, 300),  # NaN beats a larger value
    ({8100: 1e30, 7999: 2.0}, 8000, 7999),  # past the limit: never read
    ({8191: 1.0}, None, 8191),  # the last column
    ({}, None, 0),  # all equal
], ids=["tie", "nan", "limit", "last", "flat"])
def test_fused_greedy_takes_the_first_tie_and_the_first_nan(values, columns, expected):
    """Ties and NaNs in different tiles, lanes and (8 rows x 64 x 8192 is threaded) workers'
    chunks, like numpy's argmax of the same products."""
    x = np.ones((8, 64), np.float32)
    got, ref = _greedy_and_reference(x, _one_hot_kernel(values), columns)
    np.testing.assert_array_equal(got, ref)
    assert set(got) == {expected}


def test_fused_greedy_ignores_padding_and_all_minus_inf_rows():
    """A padded tile's zero columns never win, even where an infinite input makes their
    products NaN (inf * 0); a row of -inf products gives column 0, as argmax does."""
    w = np.random.default_rng(1).uniform(1, 2, (4, 70)).astype(np.float32)
    x = np.array([[np.inf, 0, 0, 0], [1, 1, 1, 1]], np.float32)
    got, ref = _greedy_and_reference(x, w)
    np.testing.assert_array_equal(got, ref)
    assert got[0] == 0  # every real column inf: the first (a padded NaN would have won)
    got, ref = _greedy_and_reference(np.ones((2, 4), np.float32), np.full((4, 70), -np.inf))
    assert list(got) == list(ref) == [0, 0]


def test_fused_greedy_rejects_bad_columns():
    packed = pack_kernel(jnp.ones((4, 70)))
    with pytest.raises(ValueError, match="columns=71; expected 1..70"):
        packed_argmax_parts(jnp.ones((2, 4)), packed, 71)
    with pytest.raises(ValueError, match="expected x \\[M, K\\] and one output axis"):
        packed_argmax_parts(jnp.ones((2, 5)), packed)


def _model(**overrides):
    config = Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=160,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         rope_theta=10_000.0, initializer_range=0.3, **overrides)
    return init_model(config, seed=3)


def test_packed_layers_run_every_linear_through_the_kernel():
    """`layer_arrays(pack=True)`: each layer's seven Linear kernels are packed and run in four
    calls of the kernel in the compiled forward (q, k and v in one, gate and up in one), with
    the unpacked forward's hidden states."""
    model = _model()
    packed = jax.jit(lambda: model.layer_arrays(pack=True))()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 1000, (2, 12)), jnp.int32)
    forward = jax.jit(lambda layers: model.hidden(tokens, layer_states=layers)[0])
    text = forward.lower(packed).as_text()
    assert text.count("custom_call @marco_packed_matmul(") == 4 * 2
    assert "marco_packed_matmul" not in forward.lower(model.layer_arrays()).as_text()
    np.testing.assert_allclose(np.asarray(forward(packed)),
                               np.asarray(forward(model.layer_arrays())), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True},
                                       {"param_dtype": "bfloat16"}],
                         ids=["untied", "tied", "bf16-params"])
def test_generate_on_packed_weights_matches_xla_dots(overrides, monkeypatch):
    """Greedy tokens at batch 1 and 8 are those of XLA's dots (MARCO_CPU_KERNELS=0), with the
    kernel in the compiled decode loop (tied heads and bf16 params with fp32 matmuls too)."""
    gen = sys.modules["marco_jax.infer.generate"]
    model = _model(**overrides)
    assert gen.packs_weights(model) and gen.packs_head(model)
    prompts = np.random.default_rng(1).integers(0, 1000, (8, 9))
    lengths = np.array([9, 3, 9, 1, 5, 9, 7, 2])
    graphdef, state = nnx.split(model)
    head = gen._head_for(model, graphdef, state)
    # bf16 weights are packed as stored (widened in registers), anything else in float32
    assert isinstance(head, gen.PackedKernel) and head.tiles.dtype == model.config.jnp_param_dtype
    ours = [np.asarray(generate(model, prompts[:b], 24, prompt_lengths=lengths[:b],
                                eos_ids=()).tokens) for b in (1, 8)]
    monkeypatch.setenv("MARCO_CPU_KERNELS", "0")
    assert not gen.packs_weights(model)
    xla = [np.asarray(generate(model, prompts[:b], 24, prompt_lengths=lengths[:b],
                               eos_ids=()).tokens) for b in (1, 8)]
    for a, b in zip(ours, xla, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(np.unique(ours[1])) > 20  # not one repeated token


def test_greedy_decoding_selects_tokens_in_the_kernel(monkeypatch):
    """Greedy decoding over the packed head picks tokens with the fused kernel (prefill and
    loop: two traced calls), within `vocab_limit`; sampling keeps the logits."""
    gen = sys.modules["marco_jax.infer.generate"]
    calls = []

    def counted(hidden, head, columns=None):
        calls.append(columns)
        return packed_greedy_tokens(hidden, head, columns)

    monkeypatch.setattr(gen, "packed_greedy_tokens", counted)
    model = _model()
    prompts = np.random.default_rng(2).integers(0, 1000, (2, 5))
    free = np.asarray(generate(model, prompts, 13, eos_ids=()).tokens)
    assert calls == [1000, 1000]
    assert free.max() >= 500  # otherwise the limit below would prove nothing
    limited = np.asarray(generate(model, prompts, 13, eos_ids=(), vocab_limit=500).tokens)
    assert calls[2:] == [500, 500] and limited.max() < 500
    generate(model, prompts, 13, eos_ids=(), temperature=0.7)
    assert len(calls) == 4


def test_sharded_params_keep_xla_dots():
    """The kernel takes whole weights: a model whose params span devices is not packed (XLA
    would quietly gather them for the custom call), and decodes as before."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    gen = sys.modules["marco_jax.infer.generate"]
    model = _model()
    assert gen.packs_weights(model) and len(jax.devices()) >= 2
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, NamedSharding(mesh, PartitionSpec())))
    assert len(model.lm_head_source().sharding.device_set) == 2
    assert not gen.packs_weights(model) and not gen.packs_head(model)
    tokens = np.asarray(generate(model, np.arange(1, 6)[None], 4, eos_ids=()).tokens)
    assert tokens.shape == (1, 4)


def _run(code: str, cache: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "XDG_CACHE_HOME": str(cache), "JAX_PLATFORMS": "cpu",
               "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=environ, timeout=300, check=False)


PROBE = """
    import jax.numpy as jnp, numpy as np
    from marco_jax.model.native import kernels_available
    from marco_jax.model.packed_matmul import pack_kernel, packed_matmul
    print(kernels_available())
    if kernels_available():
        w = np.arange(12, dtype=np.float32).reshape(3, 4)
        print(np.asarray(packed_matmul(jnp.ones((1, 3)), pack_kernel(jnp.asarray(w)))).tolist())
"""


def test_the_library_is_built_once_per_cache_and_failures_fall_back(tmp_path):
    """The first process builds the library into the cache (clearing killed builds' leftovers),
    the next loads it unchanged; with a compiler that fails, one warning line and XLA's dots."""
    # leftovers: killed builds' temporary files and object folders (over an hour old: removed;
    # fresh: another process may be writing them, kept), the earlier layout's libraries
    # (removed) and another CPU's library (kept)
    folder = tmp_path / "marco_jax" / "cpu_kernels"
    (folder / "tmpolddir").mkdir(parents=True)
    (folder / "tmpnewdir").mkdir()
    for name in ("tmpold.so", "tmpnew.so", "packed_matmul-0123.so", "kernels-other-cpu.so",
                 "tmpolddir/0-packed_matmul.o"):
        (folder / name).write_bytes(b"x")
    for name in ("tmpold.so", "tmpolddir"):
        os.utime(folder / name, (1, 1))

    first = _run(PROBE, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["True", "[[12.0,", "15.0,", "18.0,", "21.0]]"]
    built = [p for p in folder.glob("kernels-*.so") if p.name != "kernels-other-cpu.so"]
    assert len(built) == 1
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(["tmpnew.so", "tmpnewdir", "kernels-other-cpu.so", built[0].name]), left
    stamp = built[0].stat().st_mtime_ns
    again = _run(PROBE, tmp_path)
    assert again.stdout == first.stdout and built[0].stat().st_mtime_ns == stamp
    assert "warning" not in again.stderr

    broken = _run(PROBE, tmp_path / "other", CXX="false")
    assert broken.returncode == 0, broken.stderr
    assert broken.stdout.split() == ["False"]
    warnings = [line for line in broken.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "CPU kernels unavailable" in warnings[0], broken.stderr
    off = _run(PROBE, tmp_path / "off", MARCO_CPU_KERNELS="0")
    assert off.stdout.split() == ["False"] and "warning" not in off.stderr
    assert not (tmp_path / "off").exists()
