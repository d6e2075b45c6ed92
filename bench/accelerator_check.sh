#!/usr/bin/env bash
# The accelerator check: what to run first on a GPU (or a TPU VM), in about 8 minutes.
#
#   bash bench/accelerator_check.sh [--quick]
#
# On the first device JAX finds, one section after another, each under its own time limit:
#   1. the tests whose numbers depend on the platform's matrix products (Shampoo's roots, updates
#      against float64 references, its full-precision products; SOAP), run on that device;
#   2. bench/shampoo_overhead.py: Shampoo (roots every 1, 10, 100 steps, and every 10 async on the device and on the host CPU) and K-FAC against Adam;
#   3. the tiny Transformer with Adam and with Shampoo, stopped at its target.
# It writes results/accelerator/<platform>-<device kind>.md with the date, the device and each
# section's output; a section whose packages are missing (the tiny runs need the full install:
# `make install ACCEL=cuda`) says so and the others still run. --quick: shorter windows and runs,
# for a dry check on a CPU. PYTHON picks the interpreter (default: .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

QUICK=0
case "${1:-}" in
  '') ;;
  --quick) QUICK=1 ;;
  *) echo "error: unknown argument ${1}; usage: bash bench/accelerator_check.sh [--quick]" >&2; exit 2 ;;
esac
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! DEVICE=$("$PY" -c 'import jax; d = jax.devices()[0]; print(f"{d.platform}-{d.device_kind}".lower().replace(" ", "-"))' 2>/dev/null); then
  echo "error: $PY cannot import jax; run make install ACCEL=cuda (or tpu) first" >&2
  exit 2
fi
PLATFORM=${DEVICE%%-*}
[ "$PLATFORM" = gpu ] && PLATFORM=cuda
if [ "$QUICK" = 1 ]; then STEPS=20; TINY_STEPS=300; else STEPS=200; TINY_STEPS=2000; fi

OUT=results/accelerator/$DEVICE.md
mkdir -p results/accelerator
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# section TITLE SECONDS COMMAND...: the command's output (its last 60 lines) under a heading.
section() {
  local title=$1 seconds=$2; shift 2
  local start=$SECONDS code
  echo "== $title" >&2
  timeout "$seconds" "$@" > "$WORK/section.log" 2>&1
  code=$?
  {
    printf '\n## %s\n\n`%s`: exit %s after %s s%s\n\n```\n' "$title" "$*" "$code" "$((SECONDS - start))" \
        "$([ "$code" = 124 ] && echo " (stopped at its $seconds s limit)")"
    tail -n 60 "$WORK/section.log"
    printf '```\n'
  } >> "$WORK/report.md"
}

missing() {  # the modules of "$@" that do not import
  "$PY" -c 'import importlib.util, sys; print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' "$@"
}

{
  echo "# Accelerator check: $DEVICE"
  echo
  echo "Measured $(date -u +%F) on $("$PY" -c 'import jax, platform; print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, Python {platform.python_version()}")')"
  echo "by \`bash bench/accelerator_check.sh$([ "$QUICK" = 1 ] && echo ' --quick')\`."
} > "$WORK/report.md"

section "Platform-dependent tests" 240 env JAX_PLATFORMS="$PLATFORM" "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_shampoo_roots.py tests/test_shampoo.py tests/test_soap.py
section "Shampoo and K-FAC step cost against Adam" 180 "$PY" bench/shampoo_overhead.py --steps="$STEPS"
absent=$(missing tensorflow tensorflow_datasets sentencepiece clu orbax.checkpoint)
for optimizer in adam shampoo; do
  if [ -n "$absent" ]; then
    printf '\n## Tiny Transformer, %s\n\nskipped: %s not installed (make install ACCEL=cuda)\n' "$optimizer" "$absent" >> "$WORK/report.md"
    continue
  fi
  section "Tiny Transformer, $optimizer" 150 "$PY" main.py --config="configs/transformer_$optimizer.py:tiny" \
      --config.stop_at_target=True --config.num_steps="$TINY_STEPS" --workdir="$WORK/transformer_$optimizer"
done
mv "$WORK/report.md" "$OUT"
echo "wrote $OUT"
