"""experiments/bench/gpu_check.sh, the prepared GPU check: shellcheck-clean, and its dry run
(every part at tiny sizes on the CPU) writes the report a GPU run would, so the first GPU
lease spends its minutes measuring, not debugging the script."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = [os.path.join(ROOT, "experiments", "bench", s) for s in ("gpu_check.sh", "gpu_wheels.sh")]
SHELLCHECK = os.path.join(os.path.dirname(sys.executable), "shellcheck")


def _run(*args, out):
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", SCRIPTS[0], *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_scripts_pass_shellcheck():
    r = subprocess.run([SHELLCHECK, *SCRIPTS], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dry_run_writes_every_part_of_the_report(tmp_path):
    r = _run("--dry-run", out=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert "DRY RUN" in report and "Failed parts: none." in report
    # (a) the device tests are collected, and skipped here with the reason
    tests = report.split("## (a)")[1].split("## (b)")[0]
    assert "test_gpu_kernels.py" in tests and "needs a GPU; this run's backend is cpu" in tests
    assert " skipped" in tests and "failed" not in tests
    # (b) the gmm table: the dense baseline and the Pallas kernels, forward and fwd+bwd ratios
    gmm = report.split("## (b)")[1].split("## (b2)")[0]
    rows = {line.split(" | ")[1]: line for line in gmm.splitlines() if line.startswith("| ling")}
    assert {"dense", "pallas", "reference", "route pallas"} <= set(rows)
    assert "failed" not in gmm
    # (b2) the attention table: the einsum baseline and the segment-id kernel
    attention = report.split("## (b2)")[1].split("## (c)")[0]
    assert "| xla |" in attention and "| pallas |" in attention
    # (c) a train-step row with tokens/s and XLA's planned peak memory
    step = report.split("## (c)")[1]
    (row,) = [line for line in step.splitlines() if line.startswith("| full |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[2].replace(",", "")) > 0 and float(cells[4]) > 0
    for log in ("tests.log", "gmm.log", "attention.log", "train_step.log"):
        assert (tmp_path / log).stat().st_size > 0


def test_unknown_argument_is_refused(tmp_path):
    r = _run("--dryrun", out=tmp_path)
    assert r.returncode == 2 and "unknown argument '--dryrun'" in r.stderr
