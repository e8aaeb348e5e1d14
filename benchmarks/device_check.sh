#!/usr/bin/env bash
# The GPU check: under 5 minutes on one GPU, with nothing to install (torch, Lightning, timm and
# pytest present; no schedulefree, jsonargparse, pytest-xdist or network needed). Run from
# anywhere:
#
#     bash benchmarks/device_check.sh                    # writes $OUT/device_check.json
#     DEVICE=cpu QUICK=1 bash benchmarks/device_check.sh # a smoke run of the script itself
#
# Sections, each with a time limit inside one overall deadline (DEADLINE_S, default 285 s); a
# section that fails or runs out of time is recorded and the next one still runs. The limits are
# sized for a GPU; with DEVICE=cpu they, the deadline and the per-pair timeouts are multiplied by
# LIMIT_SCALE (default 10, so the CPU dry run also passes on a busy 2-core machine):
#   tests       the CUDA tests (pytest -k "cuda or gpu": the callback on the GPU, batched against
#               per-parameter, compiled against eager and the float64 oracle)
#   step_time   AMUSE's optimizer step against torch.optim.Muon, one pair per fresh process, on
#               the ViT-S/16 and ResNet-18 matrix sets: the default (batched), per-parameter path
#   step_time_compiled   the same on ViT-S/16 for compile="reduce-overhead" and compile=True
#   train_step  the end-to-end training step (byte-level GPT, ResNet-18) of AMUSE against
#               torch.optim.Muon + AdamW; on the GPT also AMUSE with compile="reduce-overhead"
# Output: one JSON, device_check.json, in $OUT if set, else benchmarks/results (logs and each
# benchmark's own JSON beside it). Exit status 0 only if every section passed.
set -u
cd "$(dirname "$0")/.."
DEST=${OUT:-benchmarks/results}
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SCALE=${LIMIT_SCALE:-$([ "$DEVICE" = cpu ] && echo 10 || echo 1)}
START=$(date +%s)
DEADLINE=$((START + ${DEADLINE_S:-$((285 * SCALE))}))
SECTIONS=()

# run NAME LIMIT_S COMMAND...: the command under `timeout`, its output in $DEST/NAME.log, and
# "NAME rc seconds" appended to $DEST/device_check_sections.txt (rc 124: out of time; skipped
# when less than 10 s are left).
: > "$DEST/device_check_sections.txt"
run() {
    local name=$1 limit=$(($2 * SCALE)) left
    shift 2
    left=$((DEADLINE - $(date +%s)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        echo "$name skipped 0" >> "$DEST/device_check_sections.txt"
        return
    fi
    local t0
    t0=$(date +%s)
    timeout "$limit" "$@" > "$DEST/$name.log" 2>&1
    local rc=$?
    echo "$name $rc $(( $(date +%s) - t0 ))" >> "$DEST/device_check_sections.txt"
    echo "[device_check] $name: rc $rc in $(( $(date +%s) - t0 )) s (limit $limit s)"
}

if [ "$QUICK" = 1 ]; then
    step=(--quick --rounds 3 --timeout $((60 * SCALE)))
    train=(--quick --warmup 2 --rounds 3)
    gpt_methods=(amuse muon_adamw)  # compiling on a CPU takes minutes; the GPU run compiles
    compiled=(amuse_compiled)       # one compiled pair is enough to check the plumbing
else
    step=(--rounds 21 --timeout $((50 * SCALE)))
    train=(--warmup 5 --rounds 20)
    gpt_methods=(amuse amuse_compiled muon_adamw)
    compiled=(amuse_cudagraphs amuse_compiled)
fi

run tests 110 "$PY" -m pytest -q -rsP -p no:cacheprovider -k "cuda or gpu" \
    tests/test_kernels.py tests/test_callback_gpu.py tests/test_captured.py
run step_time 70 "$PY" benchmarks/step_time.py --device "$DEVICE" "${step[@]}" \
    --optimizers amuse amuse_per_parameter --output "$DEST/step_time_$DEVICE.json"
run step_time_compiled 50 "$PY" benchmarks/step_time.py --device "$DEVICE" "${step[@]}" \
    --models vit_s16 --optimizers "${compiled[@]}" \
    --output "$DEST/step_time_compiled_$DEVICE.json"
run train_step_gpt 45 "$PY" benchmarks/train_step.py --device "$DEVICE" "${train[@]}" \
    --models gpt --methods "${gpt_methods[@]}" --output "$DEST/train_step_gpt_$DEVICE.json"
run train_step_resnet 40 "$PY" benchmarks/train_step.py --device "$DEVICE" "${train[@]}" \
    --models resnet --methods amuse muon_adamw --output "$DEST/train_step_resnet_$DEVICE.json"

"$PY" - "$DEST" "$DEVICE" "$QUICK" "$(( $(date +%s) - START ))" <<'PY'
import json
import os
import subprocess
import sys
from pathlib import Path

dest, device, quick, wall = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
summary = {"device": device, "quick": quick, "wall_seconds": wall, "sections": {}}
try:
    summary["load_average_1m"] = round(os.getloadavg()[0], 2)
except OSError:
    pass
try:
    summary["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20,
    ).stdout.strip()
except (OSError, subprocess.SubprocessError):
    summary["nvidia_smi"] = None
results = {
    "step_time": f"step_time_{device}.json",
    "step_time_compiled": f"step_time_compiled_{device}.json",
    "train_step_gpt": f"train_step_gpt_{device}.json",
    "train_step_resnet": f"train_step_resnet_{device}.json",
}
for line in (dest / "device_check_sections.txt").read_text().splitlines():
    name, rc, seconds = line.split()
    section = {"returncode": None if rc == "skipped" else int(rc), "seconds": int(seconds)}
    section["status"] = {"0": "passed", "124": "out of time", "skipped": "no time left"}.get(
        rc, "failed"
    )
    log = dest / f"{name}.log"
    if log.exists():
        lines = log.read_text(errors="replace").strip().splitlines()
        section["log_tail"] = lines[-12:]
        # what the GPU tests print: the measured spreads behind their tolerances
        printed = [x for x in lines if "largest difference" in x or "bf16 spread" in x]
        if printed:
            section["measured"] = printed
    path = dest / results.get(name, "-")
    if path.is_file():
        data = json.loads(path.read_text())
        section["meta"] = data.get("meta", {})
        section["models"] = data.get("models", {})
        if data.get("failed"):
            section["failed"] = data["failed"]
    summary["sections"][name] = section
tests = summary["sections"].get("tests", {})
tests["summary"] = (tests.get("log_tail") or ["(no log)"])[-1]
summary["passed"] = all(s["status"] == "passed" for s in summary["sections"].values())
(dest / "device_check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({k: v for k, v in summary.items() if k != "sections"}, indent=2))
for name, s in summary["sections"].items():
    print(f"{name:20s} {s['status']:12s} {s['seconds']:4d} s")
    for model, rows in s.get("models", {}).items():
        for opt, row in rows.items():
            ms = row.get("median_ms", row.get("step_ms"))
            ratio = row.get("ratio_to_torch_muon", row.get("ratio_to_muon_adamw"))
            if ms is not None:
                print(f"    {model:9s} {opt:20s} {ms:9.2f} ms" + (f"  x{ratio:.3f}" if ratio else ""))
sys.exit(0 if summary["passed"] else 1)
PY
