#!/usr/bin/env bash
# The prepared GPU check (issue 17): one command, a few minutes on one H100/H200, run first
# whenever a GPU is lent, before any other GPU work. It
#   (a) runs the gpu-marked tests: every Pallas kernel compiled on the GPU (Mosaic GPU gmm on
#       Hopper, the Triton kernels, tokamax when carried), values and gradients against the
#       references, bf16 and fp32 (tests/kernels/test_gpu_kernels.py);
#   (b) writes the gmm table at Ling-mini-2.0 and Ling-lite expert shapes, forward and
#       forward+backward, every impl against a dense matmul of the same FLOPs, ragged_dot and
#       tokamax (experiments/bench/kernels.py), and the attention table: the segment-id
#       kernels against the XLA einsum at Ling-mini-2.0's shape (experiments/bench/attention.py);
#   (c) times the train step of a 4-layer Ling-mini-2.0-shaped model at seq 4096 in bf16 with
#       each remat policy: tokens/s, MFU, peak memory (experiments/bench/train_step.py);
# and writes everything as markdown to $OUT/gpu_check.md (OUT: the device tool's output folder,
# else /tmp/gpu_check), logs beside it. Each part has its own time limit, so one hang cannot
# eat the lease; the exit status is non-zero if any part failed.
#
#   bash experiments/bench/gpu_wheels.sh                   # here, once: wheels into .whl/
#   bash experiments/bench/gpu_check.sh                    # there, with .whl carried
#   bash experiments/bench/gpu_check.sh --dry-run          # any CPU: every part, tiny (CI runs it)
#
# Wheels: a GPU machine with jax lacks grain, array-record and tokamax; the script installs
# whatever .whl/ holds into /tmp/site (no index, no dependency resolution) and puts it on
# PYTHONPATH. PYTHON picks the interpreter (default: python3 there, .venv/bin/python on a dry run).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (use --dry-run or nothing)" >&2; exit 2 ;;
  esac
done

OUT_DIR=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/gpu_check.md"
: >"$REPORT"
if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}
  export JAX_PLATFORMS=cpu
else
  PY=${PYTHON:-python3}
  export JAX_PLATFORMS=cuda
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl; then
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "gpu_check.sh: installing .whl/ failed; going on without it" >&2
  fi
fi

start=$(date +%s)
failed=()
part() {  # part NAME LIMIT_S CMD...: run with a time limit, log to $OUT_DIR/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" >&2
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0))s" >&2
  [ "$rc" = 0 ] || failed+=("$name (exit $rc)")
}

{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  "$PY" -c 'import jax, platform; d = jax.devices()[0]
print(f"{d.device_kind} ({d.platform}), jax {jax.__version__}, Python {platform.python_version()}")'
  if [ "$DRY" = 1 ]; then echo; echo "DRY RUN on $(uname -m) CPU: tiny sizes, no figure here is a GPU measurement."; fi
  echo
} >>"$REPORT"

if [ "$DRY" = 1 ]; then
  tests_limit=300 gmm_args=(--dry-run --models ling-mini-2.0) step_args=(--dry-run --remat full)
  attn_args=(--dry-run)
else
  tests_limit=120 gmm_args=(--tokens 16384 --repeats 10) step_args=() attn_args=()
fi

part tests "$tests_limit" "$PY" -m pytest -m gpu tests/kernels -n 0 -rs -p no:cacheprovider
{
  echo "## (a) gpu-marked tests"
  echo
  echo '```'
  grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed|skipped|error" "$OUT_DIR/tests.log" | tail -n 25
  echo '```'
  echo
  echo "## (b) grouped matmul"
  echo
} >>"$REPORT"
part gmm 120 "$PY" experiments/bench/kernels.py "${gmm_args[@]}" --markdown "$REPORT"
printf '## (b2) attention with segment ids\n\n' >>"$REPORT"
part attention 90 "$PY" experiments/bench/attention.py "${attn_args[@]}" --markdown "$REPORT"
printf '## (c) train step\n\n' >>"$REPORT"
part train_step 240 "$PY" experiments/bench/train_step.py "${step_args[@]}" --markdown "$REPORT"
echo "Total $(($(date +%s) - start)) s. Failed parts: ${failed[*]:-none}." >>"$REPORT"
cat "$REPORT"
[ ${#failed[@]} = 0 ]
