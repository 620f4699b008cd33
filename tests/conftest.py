"""Test setup: 8 fake CPU devices, fast CPU compiles and a compilation cache shared by every
test process (set before jax is imported), parallel workers, and shared fixtures.

The suite runs in parallel workers (pytest-xdist, `-n auto` in pyproject.toml, at most 4) with
whole test files kept on one worker, so a file's module fixtures are built once. Compiled
programs go to a persistent JAX cache in a temporary directory made for this run and shared by
the workers and by the CLI subprocesses the tests start: a program compiled once (the tiny
train step, say) loads in a fraction of the time in the next process that needs it. The cache
is removed at the end of the run; a run never reuses an earlier run's cache.
"""

import os
import shutil
import tempfile

# LLVM optimisation off (O0): XLA:CPU compiles 2-3x faster (the init's RNG code) to 1.3x (a
# train step), and the HLO, so what the tests check, is unchanged; the suite's programs run for
# milliseconds, so slower machine code costs less than the compiles save.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests never reach a hub: lm-eval's datasets read local files only (subprocesses inherit it).
os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
_OWN_CACHE = "LINGJAX_TEST_JAX_CACHE" not in os.environ  # the first process of the run makes it
if _OWN_CACHE:
    os.environ["LINGJAX_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="lingjax-test-jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["LINGJAX_TEST_JAX_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import jax  # noqa: E402

# A pytest plugin may have imported jax before this file ran (then it read its config from the
# environment already): set the cache explicitly too. Subprocesses read the environment.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
jax.config.update("jax_default_matmul_precision", "highest")

import pathlib  # noqa: E402
import sysconfig  # noqa: E402

import pytest  # noqa: E402

MAX_WORKERS = 4  # each worker holds 8 fake devices and its own compiles: memory bounds this


def pytest_xdist_auto_num_workers(config):
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ["LINGJAX_TEST_JAX_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> str:
    """A small real corpus: ~80 standard-library modules, byte-tokenised (built once)."""
    from lingjax.data import ByteTokenizer, write_corpus

    files = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:80]
    tok = ByteTokenizer()
    docs = (tok.encode(f.read_text(errors="replace")) for f in files)
    out = tmp_path_factory.mktemp("corpus") / "stdlib80"
    write_corpus(docs, str(out), tokenizer=tok.name, vocab_size=tok.vocab_size, domain="code")
    return str(out)


def pytest_collection_modifyitems(config, items):
    """`gpu`/`tpu`-marked tests run only where JAX's default backend is that accelerator
    (the device machine runs them with JAX_PLATFORMS=cuda, experiments/bench/gpu_check.sh);
    elsewhere they are collected and skipped with the reason."""
    backend = jax.default_backend()
    for item in items:
        for mark, want in (("gpu", "gpu"), ("tpu", "tpu")):
            if mark in item.keywords and backend != want:
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"needs a {want.upper()}; this run's backend is {backend}"
                    )
                )
