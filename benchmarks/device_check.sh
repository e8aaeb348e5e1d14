#!/usr/bin/env bash
# One GPU check, under 8 minutes on one GPU: the CUDA tests, then the pairwise step-time benchmark
# on cuda (AMUSE per-parameter, AMUSE foreach/batched and the others against torch.optim.Muon).
# Writes device_check.json (+ step_time_cuda.json, pytest log) into $OUT if set, else
# benchmarks/results. Run from the repository root:
#
#     bash benchmarks/device_check.sh
#
# DEVICE=cpu QUICK=1 bash benchmarks/device_check.sh is a smoke run of the script itself.
set -u
cd "$(dirname "$0")/.."
DEST=${OUT:-benchmarks/results}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEVICE=${DEVICE:-cuda}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

# 1. The CUDA tests (each skips itself without a GPU; -rs lists the skips).
timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider -k "cuda or gpu" \
    tests/test_kernels.py tests/test_callback_gpu.py > "$DEST/device_check_pytest.log" 2>&1
tests_rc=$?
tests_end=$(date +%s)

# 2. The pairwise benchmark on the device (fresh process per pair).
bench_args=(--device "$DEVICE" --output "$DEST/step_time_$DEVICE.json" --timeout 120)
if [ "${QUICK:-0}" = 1 ]; then
    bench_args+=(--quick)
else
    bench_args+=(--rounds 15 --optimizers amuse amuse_per_parameter amuse_foreach
                 amuse_polar_express timm_muon adamw)
fi
timeout 300 "$PY" benchmarks/step_time.py "${bench_args[@]}" > "$DEST/device_check_bench.log" 2>&1
bench_rc=$?
end=$(date +%s)

"$PY" - "$DEST" "$tests_rc" "$bench_rc" "$((tests_end - start))" "$((end - tests_end))" \
    "$DEVICE" <<'PY'
import json, sys
from pathlib import Path

dest, tests_rc, bench_rc, tests_s, bench_s, device = sys.argv[1:]
dest = Path(dest)
log = (dest / "device_check_pytest.log").read_text().strip().splitlines()
summary = {
    "device": device,
    "tests": {"returncode": int(tests_rc), "seconds": int(tests_s), "summary": log[-1:] },
    "step_time": {"returncode": int(bench_rc), "seconds": int(bench_s)},
}
bench = dest / f"step_time_{device}.json"
if bench.exists():
    data = json.loads(bench.read_text())
    summary["meta"] = data.get("meta", {})
    summary["step_time"]["ratio_to_torch_muon"] = {
        model: {name: row["ratio_to_torch_muon"] for name, row in rows.items()}
        for model, rows in data.get("models", {}).items()
    }
    summary["step_time"]["median_ms"] = {
        model: {name: row["median_ms"] for name, row in rows.items()}
        for model, rows in data.get("models", {}).items()
    }
(dest / "device_check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
