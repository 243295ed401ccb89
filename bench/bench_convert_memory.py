"""Peak host memory of checkpoint conversion versus checkpoint size.

Writes a synthetic HF-layout Qwen2 checkpoint (random fp32 data, streamed to disk tensor by
tensor, sharded with an index), then runs `python -m marco_jax.convert hf-to-orbax` and
`orbax-to-hf` each in a child process and prints the child's peak RSS (wait4's ru_maxrss), the
checkpoint size and the largest tensor, plus the RSS of a child that only imports the converter
(the fixed cost of Python + JAX + tensorstore). Finally checks the exported tensors are
bit-identical to the synthetic ones.

  .venv/bin/python bench/bench_convert_memory.py [--hidden 2048 --layers 4 --vocab 151936]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from marco_jax.convert.mapping import expected_hf_tensors
from marco_jax.convert.ours_to_hf import parse_size, plan_shards
from marco_jax.convert.safetensors_io import SafetensorsWriter, read_header, read_tensor
from marco_jax.model.config import Qwen2Config

GB = 10**9
ROW_BLOCK = 8192  # rows generated at a time while writing the synthetic checkpoint


def _block(rows: int, cols: int, seed: int) -> np.ndarray:
    return 0.02 * np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)


def write_synthetic_hf(directory: Path, config: Qwen2Config, shard_bytes: int) -> dict:
    directory.mkdir(parents=True)
    shapes = expected_hf_tensors(config)
    sizes = {n: int(np.prod(s)) * 4 for n, s in shapes.items()}
    shards = plan_shards(list(sizes.items()), shard_bytes)
    weight_map = {}
    for i, names in enumerate(shards):
        file = directory / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        with SafetensorsWriter(file, [(n, np.float32, shapes[n]) for n in names]) as w:
            for name in names:
                shape = shapes[name]
                rows, cols = shape[0], int(np.prod(shape[1:]))
                for r0 in range(0, rows, ROW_BLOCK):
                    n = min(ROW_BLOCK, rows - r0)
                    seed = zlib.crc32(f"{name}:{r0}".encode())
                    w.append(name, _block(n, cols, seed).reshape(n, *shape[1:]))
                weight_map[name] = file.name
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    (directory / "config.json").write_text(json.dumps(config.to_hf_dict()))
    return sizes


def run_child(args: list[str]) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of one child process."""
    start = time.time()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(args)}")
    return usage.ru_maxrss * 1024 / GB, time.time() - start


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def compare_all(a: Path, b: Path) -> int:
    """Bit-compare every tensor of two safetensors dirs, one tensor at a time."""
    infos_a = {n: i for f in sorted(a.glob("*.safetensors")) for n, i in read_header(f).items()}
    infos_b = {n: i for f in sorted(b.glob("*.safetensors")) for n, i in read_header(f).items()}
    if sorted(infos_a) != sorted(infos_b):
        raise SystemExit(f"tensor names differ: {sorted(set(infos_a) ^ set(infos_b))}")
    for name, info in infos_a.items():
        rows = info.shape[0]
        for r0 in range(0, rows, ROW_BLOCK):
            span = (r0, min(rows, r0 + ROW_BLOCK))
            if read_tensor(info, span).tobytes() != read_tensor(infos_b[name], span).tobytes():
                raise SystemExit(f"{name}: exported tensor differs in rows {span}")
    return len(infos_a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--shard-size", default="1GB", help="HF shard size, both directions")
    p.add_argument("--workdir", type=Path, help="default: a temporary dir, removed at the end")
    args = p.parse_args()

    config = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden,
                         intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         tie_word_embeddings=False)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    try:
        t = time.time()
        sizes = write_synthetic_hf(work / "hf", config, parse_size(args.shard_size))
        total = dir_bytes(work / "hf")
        largest = max(sizes, key=sizes.get)
        print(f"synthetic checkpoint: {config.num_params() / 1e9:.2f}B params fp32, "
              f"{total / GB:.2f} GB on disk in {len(list((work / 'hf').glob('*.safetensors')))} "
              f"shards (written in {time.time() - t:.0f}s)")
        print(f"largest tensor: {largest} {list(expected_hf_tensors(config)[largest])} = "
              f"{sizes[largest] / GB:.3f} GB; largest per-layer tensor: "
              f"{max(v for k, v in sizes.items() if '.layers.' in k) / GB:.3f} GB")

        base, _ = run_child(["-c", "import marco_jax.convert.hf_to_ours, "
                                   "marco_jax.convert.ours_to_hf"])
        rss_in, t_in = run_child(["-m", "marco_jax.convert", "hf-to-orbax", "--hf",
                                  str(work / "hf"), "--out", str(work / "ours")])
        rss_out, t_out = run_child(["-m", "marco_jax.convert", "orbax-to-hf", "--checkpoint",
                                    str(work / "ours"), "--out", str(work / "back"),
                                    "--max-shard-size", args.shard_size])
        n = compare_all(work / "hf", work / "back")
        print(f"import-only child peak RSS: {base:.3f} GB (Python + JAX + tensorstore)")
        for what, rss, secs in (("hf-to-orbax", rss_in, t_in), ("orbax-to-hf", rss_out, t_out)):
            print(f"{what}: peak RSS {rss:.3f} GB = {rss * GB / total:.1%} of the checkpoint "
                  f"({(rss - base) * 1e3:.0f} MB above import-only), {secs:.0f}s")
        print(f"Orbax checkpoint on disk: {dir_bytes(work / 'ours') / GB:.2f} GB")
        print(f"round trip: all {n} tensors bit-identical")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
