"""Test setup: 8 fake CPU devices (set before jax is imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_default_matmul_precision", "highest")

import pathlib  # noqa: E402
import sysconfig  # noqa: E402

import pytest  # noqa: E402


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
