"""The prepared accelerator check (bench/bench_device.py) in its CPU smoke mode: it must still run
when a session finally gets a device, and its MFU and FLOPs figures must be the hand formula."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_device.py"


def _run(monkeypatch, *args: str) -> int:
    """bench_device.main() in this process with `args` as its command line; the exit code."""
    spec = importlib.util.spec_from_file_location("bench_device", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(BENCH), *args])
    try:
        module.main()
    except SystemExit as e:
        return int(e.code)
    return 0


# bench_device.SMOKE_DIMS: vocab, embed, mlp, layers, heads, kv heads, head dim.
V, E, MLP, LAYERS, H, K, D = 512, 64, 128, 2, 4, 2, 16


def _hand_params() -> int:
    # Counted by hand: tied embedding, per layer q/k/v (with biases) + o + gate/up/down + 2 norms,
    # final norm.
    layer = E * H * D + H * D + 2 * (E * K * D + K * D) + H * D * E + 3 * E * MLP + 2 * E
    return V * E + LAYERS * layer + E


def _hand_flops_per_token(seq: int) -> float:
    # One lm-head matmul (tied); attention causal half.
    return 6.0 * _hand_params() + 6.0 * LAYERS * seq * H * D


# A whole bench run on CPU (~17 s): slow, CI's slow run keeps it; the decode-timing arithmetic
# and the flag errors are checked by the fast tests below.
@pytest.mark.slow
def test_smoke_run_reports_the_hand_counted_mfu_and_decodes_the_same_weights(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    out = tmp_path / "r.json"
    rc = _run(monkeypatch, "--smoke", "--sizes", "0.5b", "--rows", "2", "--steps", "2",
              "--decode-sizes", "0.5b", "--decode-batches", "2", "--prompt-len", "16",
              "--new-tokens", "24", "--json", str(out))
    assert rc == 0
    res = json.loads(out.read_text())
    (train,) = res["train"]
    assert train["seq_len"] == 128 and train["rows"] == 2
    assert train["model_flops_per_token"] == pytest.approx(_hand_flops_per_token(128), rel=1e-9)
    assert train["tokens_per_s"] == pytest.approx(2 * 128 / train["step_s"], rel=1e-9)
    assert train["mfu"] == pytest.approx(
        train["model_flops_per_token"] * train["tokens_per_s"] / res["peak_flops"], rel=1e-9)
    # Random init: the first loss is close to a uniform guess over the 512-token vocabulary.
    assert abs(train["first_loss"] - math.log(512)) < 0.1
    (dec,) = res["decode"]
    assert dec["batch"] == 2 and dec["ours_tokens_per_s"] > 0 and res["bandwidth"] > 0
    # Same converted weights on both sides: greedy tokens agree (different weights: ~1/512).
    assert dec["tokens_equal"] >= 0.75


@pytest.mark.parametrize("flag,value", [("--sizes", "3b"), ("--decode-batches", "x"),
                                        ("--new-tokens", "1")])
def test_bad_flags_get_one_line_and_exit_2(monkeypatch, capsys, flag, value):
    assert _run(monkeypatch, flag, value) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and value in err


def _common(monkeypatch):
    """bench/common.py with its clock replaced by one the fake decode below advances."""
    spec = importlib.util.spec_from_file_location("bench_common", BENCH.parent / "common.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_common", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    clock = [0.0]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    return module, clock


def test_decode_timing_splits_prefill_and_step_by_hand(monkeypatch):
    common, clock = _common(monkeypatch)
    calls = []

    def run(n):  # 50 ms prefill, 2 ms per further token; the first call of each length is slow
        clock[0] += 0.050 + 0.002 * (n - 1) + (0.010 if n not in calls else 0.0)
        calls.append(n)
        return [[0] * n]

    t = common.time_decode(run, 11, repeats=2)
    assert t.prefill_s == pytest.approx(0.050) and t.step_s == pytest.approx(0.002)
    assert t.total_s == pytest.approx(0.070)
    assert t.end_to_end_tokens_per_s() == pytest.approx(11 / 0.070)
    assert calls == [1, 1, 11, 1, 1, 11]  # an untimed re-entry call, then both lengths


def test_decode_sides_take_turns_and_a_side_after_another_is_not_charged(monkeypatch):
    common, clock = _common(monkeypatch)
    calls, last = [], [None]

    def side(name, prefill, step):
        def run(n):  # the first call after the other side pays 30 ms of after-effects
            clock[0] += prefill + step * (n - 1) + (0.030 if last[0] not in (None, name) else 0)
            calls.append((name, n))
            last[0] = name
            return [[0] * n]
        return run

    a, b = common.time_decode_sides([side("a", 0.050, 0.002), side("b", 0.020, 0.004)], 6,
                                    rounds=1)  # b runs only right after a
    assert (a.prefill_s, a.step_s) == (pytest.approx(0.050), pytest.approx(0.002))
    assert (b.prefill_s, b.step_s) == (pytest.approx(0.020), pytest.approx(0.004))
    calls.clear()
    common.time_decode_sides([side("a", 0.050, 0.002), side("b", 0.020, 0.004)], 6, rounds=3)
    # Turns of three calls (re-entry, 1, 6 tokens), the order reversed every other round.
    assert calls[:3] == [("a", 1), ("a", 1), ("a", 6)] and len(calls) == 3 * 6
    assert [name for name, _ in calls[::3]] == ["a", "b", "b", "a", "a", "b"]


def test_decode_timing_refuses_a_step_it_cannot_see(monkeypatch):
    common, clock = _common(monkeypatch)

    def run(n):  # noise hides the step: every length takes the same time
        clock[0] += 0.050
        return [[0] * n]

    with pytest.raises(RuntimeError, match="too few new tokens"):
        common.time_decode(run, 4)
