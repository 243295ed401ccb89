"""The eval engine against transformers on a tiny random Qwen2 with the real 151,936-row vocabulary,
so real multilingual text (XCOPA items) is tokenised and scored: per-item log-likelihoods
(bucketed, packed rows), rolling windows, greedy generation token for token, stop strings, a mesh.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
from hf_fixtures import make_hf_model
from jax.sharding import Mesh
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from parity_fixtures import load_hf_weights, sharpen

from marco_jax.data.tokenizer import get_tokenizer
from marco_jax.evals.batching import plan_batches
from marco_jax.evals.engine import Engine, cut_at_stops, rolling_windows

VOCAB = 151936
REAL_TOKENS = 151646  # ids past this are embedding padding rows
LANGS = ("zh", "et", "th")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    _, hf = make_hf_model(tmp_path_factory.mktemp("engine"), vocab=VOCAB, hidden=32, heads=4,
                          kv_heads=2, layers=2, tie=False, seed=3)
    sharpen(hf)
    return hf, load_hf_weights(hf)


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer()


@pytest.fixture(scope="module")
def xcopa_requests(shared_data):
    """XCOPA items as (context, continuation) pairs in lm-eval's xcopa layout."""
    requests = []
    for lang in LANGS:
        path = shared_data / "benchmarks" / "xcopa" / lang / f"val.{lang}.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines()[:5]:
            item = json.loads(line)
            connector = " because" if item["question"] == "cause" else " therefore"
            context = item["premise"].rstrip(".。") + connector
            requests += [(context, " " + item["choice1"]), (context, " " + item["choice2"])]
    return requests


def hf_logprobs(hf, context: list[int], continuation: list[int]) -> tuple[np.ndarray, bool]:
    """Per-token log-probs of `continuation` after `context`, one unpadded sequence."""
    full = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(hf(full).logits[0, :-1].double(), dim=-1).numpy()
    targets = full[0, 1:].numpy()
    picked = logprobs[np.arange(len(targets)), targets][-len(continuation):]
    greedy = (logprobs.argmax(-1) == targets)[-len(continuation):].all()
    return picked, bool(greedy)


_HF_GREEDY: dict = {}


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy continuation (memoised: HF's generate is slow with a 152k vocab)."""
    key = (id(hf), tuple(prompt), n)
    if key not in _HF_GREEDY:
        _HF_GREEDY[key] = _hf_greedy(hf, prompt, n)
    return _HF_GREEDY[key]


def _hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, top_k=None,
                      top_p=None, suppress_tokens=list(range(REAL_TOKENS, VOCAB)),
                      eos_token_id=151643, pad_token_id=151643)
    return out[0, len(prompt):].tolist()


def test_planner_buckets_and_packs():
    batches = plan_batches([60, 30, 12, 10, 9, 7, 5, 3], batch_size=2, buckets=(16, 32, 64))
    widths = [b.width for b in batches]
    assert widths[0] == 64 and 16 in widths
    lengths = dict(enumerate([60, 30, 12, 10, 9, 7, 5, 3]))
    seen = sorted(i for b in batches for row in b.rows for i in row)
    assert seen == list(range(8))
    for b in batches:
        assert len(b.rows) <= 2
        for row in b.rows:
            assert sum(lengths[i] for i in row) <= b.width
    assert any(len(row) > 1 for b in batches for row in b.rows)


def test_xcopa_loglikelihoods_match_transformers(pair, tokenizer, xcopa_requests):
    hf, model = pair
    engine = Engine(model, tokenizer, batch_size=4, max_len=64, length_buckets=(16, 32, 64))
    token_requests = [engine.encode_pair(c, x) for c, x in xcopa_requests]
    plan = plan_batches([len(c) + len(x) - 1 for c, x in token_requests], batch_size=4,
                        buckets=engine.buckets)
    assert len({b.width for b in plan}) >= 2, "items should span several buckets"
    assert any(len(row) > 1 for b in plan for row in b.rows), "some rows should be packed"
    # Greedy continuations make is_greedy=True cases.
    extra = [(token_requests[0][0], hf_greedy(hf, token_requests[0][0], 3))]
    results = engine.loglikelihood(xcopa_requests)
    results += engine.loglikelihood_tokens(extra)
    for (context, continuation), (logprob, greedy) in zip(token_requests + extra, results,
                                                          strict=True):
        picked, hf_greedy_flag = hf_logprobs(hf, context, continuation)
        assert abs(logprob - picked.sum()) < 1e-4, (context, continuation)
        assert greedy == hf_greedy_flag
    assert results[-1][1]
    # The request order is kept: both XCOPA choices of an item differ, duplicates agree.
    again = engine.loglikelihood([xcopa_requests[3], xcopa_requests[0], xcopa_requests[3]])
    assert again[0] == again[2] == results[3] and again[1] == results[0]


def test_unpacked_and_packed_rows_agree(pair, tokenizer, xcopa_requests):
    _, model = pair
    kwargs = dict(batch_size=3, max_len=64, length_buckets=(16, 32, 64))
    packed = Engine(model, tokenizer, **kwargs).loglikelihood(xcopa_requests[:12])
    plain = Engine(model, tokenizer, pack=False, **kwargs).loglikelihood(xcopa_requests[:12])
    np.testing.assert_allclose([p[0] for p in packed], [p[0] for p in plain], atol=1e-5)


def test_empty_context_is_conditioned_on_endoftext(pair, tokenizer):
    hf, model = pair
    engine = Engine(model, tokenizer, batch_size=2, max_len=32, length_buckets=(16, 32))
    [(logprob, _)] = engine.loglikelihood([("", "Habari ya asubuhi")])
    picked, _ = hf_logprobs(hf, [tokenizer.eos_id], tokenizer.encode("Habari ya asubuhi"))
    assert abs(logprob - picked.sum()) < 1e-4


def test_rolling_loglikelihood_over_hand_computed_windows(pair, tokenizer, shared_data):
    hf, model = pair
    max_len = 32
    text = " ".join((shared_data / "text" / "leipzig_sentences" / "sw.txt")
                    .read_text(encoding="utf-8").splitlines()[:4])
    short = "Dunia ni nzuri."
    ids = tokenizer.encode(text)
    assert len(ids) > 2 * max_len + 5
    # By hand: the first window predicts ids[:32] from <|endoftext|> + ids[:31]; window k predicts
    # ids[32k:32k+32] from the 32 tokens before each target.
    expected = hf_logprobs(hf, [tokenizer.eos_id], ids[:max_len])[0].sum()
    for start in range(max_len, len(ids), max_len):
        target = ids[start:start + max_len]
        context = ids[start - 1 - (max_len - len(target)):start]
        expected += hf_logprobs(hf, context[:1], context[1:] + target)[0][-len(target):].sum()
    short_expected = hf_logprobs(hf, [tokenizer.eos_id], tokenizer.encode(short))[0].sum()
    engine = Engine(model, tokenizer, batch_size=2, max_len=max_len, length_buckets=(16, 32))
    got = engine.loglikelihood_rolling([text, short])
    np.testing.assert_allclose(got, [expected, short_expected], atol=1e-4)
    # Our windows are lm-eval's.
    reference = [make_disjoint_window(w)
                 for w in get_rolling_token_windows(ids, tokenizer.eos_id, max_len, 1)]
    assert rolling_windows(ids, tokenizer.eos_id, max_len) == reference


PROMPTS = ["Mwanafunzi alifungua kitabu na", "那人打开水龙头。", "The weather in Tallinn today is",
           "Ngày mai"]
NEW = 24


def test_greedy_generation_matches_transformers_token_for_token(pair, tokenizer):
    hf, model = pair
    engine = Engine(model, tokenizer, batch_size=3, max_len=64, length_buckets=(8, 64),
                    decode_chunk=8)
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    ids, texts = engine.generate_tokens(prompts, max_new_tokens=NEW, stop_token_ids=())
    for prompt, got, text in zip(prompts, ids, texts, strict=True):
        expected = hf_greedy(hf, prompt, NEW)
        assert got == expected
        assert text == tokenizer.decode(expected)
    assert engine.generate(PROMPTS[:2], max_new_tokens=NEW) == texts[:2]


def test_kept_weight_layouts_are_built_once_and_match_the_sliced_path(pair, tokenizer,
                                                                     xcopa_requests, monkeypatch):
    """On CPU the engine builds its per-layer params once, for scoring and generation alike (an
    untied fp32 head is read as stored by scoring, and packed once for generation where the CPU
    matmul kernel runs); over the memory budget it slices the stacked params in
    every call instead, with the same scores and tokens."""
    import sys

    gen = sys.modules["marco_jax.infer.generate"]
    _, model = pair
    kwargs = dict(batch_size=3, max_len=64, length_buckets=(32, 64), decode_chunk=8)
    prompts = [tokenizer.encode(p) for p in PROMPTS[:2]]

    def run(engine):
        builds = {"head": 0, "layers": 0}
        head, layers = engine._decode_head, engine._decode_layers

        def counted(name, fn):
            return lambda *a: builds.__setitem__(name, builds[name] + 1) or fn(*a)
        engine._decode_head, engine._decode_layers = counted("head", head), counted("layers",
                                                                                    layers)
        scores = engine.loglikelihood(xcopa_requests[:3])
        ids, _ = engine.generate_tokens(prompts, max_new_tokens=8, stop_token_ids=())
        scores += engine.loglikelihood(xcopa_requests[3:6])
        return scores, ids, builds, engine._kept_layouts()[1]

    kept_scores, kept_ids, builds, layers = run(Engine(model, tokenizer, **kwargs))
    # The head is stored as scoring reads it; generation packs it for the CPU matmul kernel.
    assert builds == {"head": int(gen.packs_head(model)), "layers": 1} and layers is not None
    monkeypatch.setattr(gen, "LAYER_COPY_MAX_RAM_FRACTION", 0.0)
    sliced_scores, sliced_ids, builds, layers = run(Engine(model, tokenizer, **kwargs))
    assert builds == {"head": 0, "layers": 0} and layers is None
    np.testing.assert_allclose(kept_scores, sliced_scores, rtol=1e-6)
    assert kept_ids == sliced_ids


def test_engine_layouts_follow_the_cpu_kernel_switch(pair, tokenizer, xcopa_requests,
                                                     monkeypatch):
    """An engine's kept layers are packed for the CPU matmul kernel, and rebuilt unpacked when
    MARCO_CPU_KERNELS=0 is set later in the process (and the scores stay the same)."""
    import sys

    gen = sys.modules["marco_jax.infer.generate"]
    _, model = pair
    engine = Engine(model, tokenizer, batch_size=3, max_len=64, length_buckets=(32, 64))

    def packed_leaves() -> int:
        layers = engine._kept_layouts()[1]
        leaves = jax.tree.leaves(layers, is_leaf=lambda v: isinstance(v, gen.PackedKernel))
        return sum(isinstance(v, gen.PackedKernel) for v in leaves)

    with_kernel = engine.loglikelihood(xcopa_requests[:3])
    assert packed_leaves() == 7 * model.config.num_hidden_layers
    monkeypatch.setenv("MARCO_CPU_KERNELS", "0")
    without = engine.loglikelihood(xcopa_requests[:3])
    assert packed_leaves() == 0
    np.testing.assert_allclose(with_kernel, without, rtol=1e-6)


def test_engine_layouts_follow_a_params_update_and_are_what_it_reads(pair, tokenizer,
                                                                     xcopa_requests):
    """After `nnx.update` on its model the engine scores and generates with the new params (its
    kept head and layers are rebuilt), and the kept layers are what it reads: layers built from
    another model give that model's results when the rest of the params are the same."""
    from flax import nnx

    from marco_jax.model.qwen2 import init_model

    _, model = pair
    kwargs = dict(batch_size=3, max_len=64, length_buckets=(32, 64), decode_chunk=8)
    requests = xcopa_requests[:3]
    prompts = [tokenizer.encode(p) for p in PROMPTS[:2]]

    def results(engine):
        scores = engine.loglikelihood(requests)
        return scores, engine.generate_tokens(prompts, max_new_tokens=8, stop_token_ids=())[0]

    other = init_model(model.config.replace(initializer_range=0.3), seed=5)
    mutable = init_model(model.config, seed=0)
    nnx.update(mutable, nnx.state(model))
    engine = Engine(mutable, tokenizer, **kwargs)
    before = results(engine)
    nnx.update(mutable, nnx.state(other))
    after = results(engine)
    expected = results(Engine(other, tokenizer, **kwargs))
    np.testing.assert_allclose(after[0], expected[0], rtol=1e-6)
    assert after[1] == expected[1] and after[1] != before[1]

    # Kept layers of `other` under `model`'s embedding and head: as a model holding both.
    hybrid = init_model(model.config, seed=0)
    nnx.update(hybrid, nnx.state(model))
    nnx.update(hybrid.model.layers, nnx.state(other.model.layers))
    engine = Engine(model, tokenizer, **kwargs)
    other_graphdef, other_state = nnx.split(other)
    build = engine._decode_layers
    engine._decode_layers = lambda *a: build(other_graphdef, other_state)
    got = results(engine)
    want = results(Engine(hybrid, tokenizer, **kwargs))
    assert not np.allclose(want[0], before[0], rtol=1e-4)  # the hybrid is another model
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    assert got[1] == want[1]


def test_stop_strings_and_stop_tokens_cut_where_expected(pair, tokenizer):
    hf, model = pair
    engine = Engine(model, tokenizer, batch_size=2, max_len=64, length_buckets=(64,),
                    decode_chunk=4)
    prompt = tokenizer.encode(PROMPTS[2])
    reference = hf_greedy(hf, prompt, NEW)
    full = tokenizer.decode(reference)
    stop = tokenizer.decode(reference[5:7])  # text that first appears around token 6
    expected = cut_at_stops(full, [stop])
    assert expected == full.split(stop)[0] and len(expected) < len(full)
    ids, [text] = engine.generate_tokens([prompt], max_new_tokens=NEW, stop=["\x00never", stop])
    assert text == expected
    assert len(ids[0]) <= 7 + engine.decode_chunk  # decoding ended soon after the stop string
    # A stop token (EOS-like) ends the row just before it, excluded from the output.
    stop_id = reference[9]
    first = reference.index(stop_id)
    ids, [text] = engine.generate_tokens([prompt], max_new_tokens=NEW, stop_token_ids=[stop_id])
    assert ids[0] == reference[:first] and text == tokenizer.decode(reference[:first])


def test_mesh_matches_single_device(pair, tokenizer, xcopa_requests):
    hf, model = pair
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    kwargs = dict(batch_size=3, max_len=64, length_buckets=(32, 64))
    sharded = Engine(model, tokenizer, mesh=mesh, **kwargs)
    assert sharded.batch_size == 4  # rounded up to the 4-way data parallelism
    single = Engine(model, tokenizer, **kwargs)
    requests = xcopa_requests[:10]
    np.testing.assert_allclose([r[0] for r in sharded.loglikelihood(requests)],
                               [r[0] for r in single.loglikelihood(requests)], atol=1e-4)
    assert (sharded.generate(PROMPTS[:3], max_new_tokens=5)
            == single.generate(PROMPTS[:3], max_new_tokens=5))


# -- multi-host: two JAX processes x two CPU devices (this file run as a script is the worker) --

def _multihost_cases():
    """Deterministic model and requests, the same in every process."""
    from marco_jax.model.config import Qwen2Config
    from marco_jax.model.qwen2 import init_model

    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0)
    rng = np.random.default_rng(0)
    requests = [(rng.integers(0, 5000, n).tolist(), rng.integers(0, 5000, m).tolist())
                for n, m in rng.integers(1, 40, (23, 2))]
    prompts = [rng.integers(0, 5000, n).tolist() for n in rng.integers(1, 30, 7)]
    return init_model(config, seed=0), requests, prompts


def _multihost_results(engine: Engine, requests, prompts) -> dict:
    scores = engine.loglikelihood_tokens(requests)
    ids, _ = engine.generate_tokens(prompts, max_new_tokens=9, stop_token_ids=())
    return {"logprob": [s[0] for s in scores], "greedy": [s[1] for s in scores], "ids": ids}


def _multihost_worker() -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import os

    jax.distributed.initialize(os.environ["EVAL_COORDINATOR"], num_processes=2,
                               process_id=int(os.environ["EVAL_PROCESS_ID"]))
    model, requests, prompts = _multihost_cases()
    tok = get_tokenizer()
    kwargs = dict(batch_size=4, max_len=64, length_buckets=(16, 32, 64))
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 1, 2), ("data", "fsdp", "tensor"))
    out = {"process": jax.process_index(), "devices": jax.device_count(),
           "mesh": _multihost_results(Engine(model, tok, mesh=mesh, **kwargs), requests, prompts),
           "shares": _multihost_results(Engine(model, tok, **kwargs), requests, prompts)}
    print(json.dumps(out))


@pytest.mark.slow  # two fresh JAX processes: ~30 s on two cores
def test_two_processes_share_the_work_and_gather(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(2):
        env = dict(os.environ, EVAL_COORDINATOR=f"127.0.0.1:{port}", EVAL_PROCESS_ID=str(pid),
                   JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2")
        procs.append(subprocess.Popen([sys.executable, __file__, "--multihost-worker"], env=env,
                                      text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    model, requests, prompts = _multihost_cases()
    single = _multihost_results(Engine(model, get_tokenizer(), batch_size=4, max_len=64,
                                       length_buckets=(16, 32, 64)), requests, prompts)
    assert sorted(o["process"] for o in outs) == [0, 1] and outs[0]["devices"] == 4
    for o in outs:
        for mode in ("mesh", "shares"):
            np.testing.assert_allclose(o[mode]["logprob"], single["logprob"], atol=1e-4)
            assert o[mode]["greedy"] == single["greedy"]
            assert o[mode]["ids"] == single["ids"]


if __name__ == "__main__" and "--multihost-worker" in __import__("sys").argv:
    _multihost_worker()
