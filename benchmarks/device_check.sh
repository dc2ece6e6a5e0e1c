#!/usr/bin/env bash
# Everything a lent GPU should check (issue 15), in one call of at most DEADLINE seconds
# (default 540: a 9-minute window):
#   1. precision: a paper-sized network at fp32/bf16/fp16, every output finite;
#   2. CUDA vs CPU at fp32 on a real map (goal: within 1e-3 of the output's range);
#   3. `cryosamu benchmark time` on 128³ and 256³ maps, shipped (light) and paper-sized;
#   4. benchmarks/train_speed.py, light and paper;
#   5. `prepare-data` of the training set on all of the machine's cores;
#   6. a `--time-budget` training run of the paper preset, its half-precision checkpoint kept;
#   7. if time is left: train_speed.py with torch.compile.
# Each step has a time limit and the script goes on after a failed step. What it writes into
# OUT_DIR (at most 8 files of 16 MiB, as the device tool brings back): log.txt, results.json
# (every step's figures), metrics.jsonl, best-half.json and best-half.pt in parts of 15 MiB
# (`cat best-half.pt.part* > best-half.pt`).
#
# Before: `python benchmarks/device_payload.py` (data and wheels into .device-payload/, which
# git ignores). Then, with the device tool:
#   run(command="bash benchmarks/device_check.sh $OUT 3", carry=[".device-payload"], timeout_s=600)
# On a CPU, QUICK=1 DEVICE=cpu runs the same steps at toy sizes (to try the script).
#
# usage: benchmarks/device_check.sh OUT_DIR [TRAIN_MINUTES]
set -uo pipefail
OUT=$(mkdir -p "${1:?usage: benchmarks/device_check.sh OUT_DIR [TRAIN_MINUTES]}" && cd "$1" && pwd)
TRAIN_MINUTES=${2:-3}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-540}
QUICK=${QUICK:-0}
cd "$(dirname "$0")/.."
PAYLOAD=${PAYLOAD:-$PWD/.device-payload}
WORK=$(mktemp -d)
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 COLUMNS=160

if ! python3 -c "import mrcfile, gemmi, platformdirs" 2>/dev/null && compgen -G "$PAYLOAD/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "$PAYLOAD"/wheels/*.whl || exit 1
  export PYTHONPATH="$WORK/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

CRYOSAMU=(python3 -m cryosamu_cli.cli.app)  # the checkout's code (nothing is installed there)
step() { echo "== $* ($(date +%T), ${SECONDS} s in)" | tee -a "$LOG"; }
# limit WANTED: WANTED seconds, or what is left before the deadline (minus RESERVE for the steps after)
limit() { local left=$((DEADLINE - SECONDS - ${2:-0})); echo $(( left < $1 ? (left > 0 ? left : 1) : $1 )); }
run() { local seconds=$1; shift; timeout "$seconds" "$@" 2>&1 | tee -a "$LOG"; echo "(exit ${PIPESTATUS[0]})" | tee -a "$LOG"; }

if [ "$QUICK" = 1 ]; then
  EDGE=32; PRESET_CHECK=light; SIZES=64; SPEED_ARGS=(--presets light --edge 32 --steps 2 --warmup 1)
  PREPARE_ARGS=(); TRAIN_ARGS=(--preset light --crop-size 32 --batch-size 2 --val-cubes 4)
else
  EDGE=128; PRESET_CHECK=paper; SIZES=128,256; SPEED_ARGS=()
  PREPARE_ARGS=(--degrade-real 4 --degradation realistic --target-resolution input
                --simulate-from "$PAYLOAD/data/structures" --simulate-from "$PAYLOAD/data/structures-bm5"
                --noise-reference "$PAYLOAD/data/noise_reference.mrc.gz")
  TRAIN_ARGS=(--preset paper --batch-size 16 --learning-rate 3e-4 --val-cubes 512)
fi

step "environment"
run 60 python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0)); import os; print(os.cpu_count(), 'CPU cores')"

step "1. precision: a $PRESET_CHECK-sized network at fp32, bf16 and fp16 on a ${EDGE}³ map"
run "$(limit 90 300)" python3 benchmarks/device_checks.py precision --device "$DEVICE" --edge "$EDGE" \
  --preset "$PRESET_CHECK" --json "$WORK/precision.json"

step "2. $DEVICE vs CPU at fp32 on a real map (emd-1461, a training pair)"
run "$(limit 90 300)" python3 benchmarks/device_checks.py agreement \
  "$PAYLOAD/data/pairs/emd-1461/emd_1461.mrc.gz" --device "$DEVICE" --json "$WORK/agreement.json"

step "3. enhance timing: the shipped model and a paper-sized one"
run "$(limit 60 240)" "${CRYOSAMU[@]}" benchmark time --sizes "$SIZES" --device "$DEVICE" --repeats 3 \
  --json "$WORK/time_shipped.json"
python3 -c "
import sys; sys.path.insert(0, 'benchmarks')
from pathlib import Path; from _common import random_checkpoint
from cryosamu_cli.model.config import preset_config
random_checkpoint(Path('$WORK/paper.pt'), config=preset_config('paper'))"
run "$(limit 75 240)" "${CRYOSAMU[@]}" benchmark time --sizes "$SIZES" --device "$DEVICE" --repeats 3 \
  --weights "$WORK/paper.pt" --json "$WORK/time_paper.json"

step "4. training speed"
run "$(limit 90 200)" python3 benchmarks/train_speed.py --device "$DEVICE" "${SPEED_ARGS[@]}" \
  --json "$WORK/train_speed.json"

# the manifest is rewritten after every pair, so a cut-off prepare-data still leaves a folder to
# train on (the validation pairs come first in the CSV)
step "5. prepare-data on $(nproc) cores"
run "$(limit 150 100)" "${CRYOSAMU[@]}" prepare-data "$PAYLOAD/data/pairs.csv" -o "$WORK/data" --no-struct \
  --workers "$(nproc)" "${PREPARE_ARGS[@]}"

step "6. a time-budgeted training run"
minutes=$(python3 -c "print(round(max(0.2, min($TRAIN_MINUTES, ($DEADLINE - $SECONDS - 45) / 60)), 2))")
run "$(limit $(python3 -c "print(int($minutes * 60 + 90))"))" "${CRYOSAMU[@]}" train "$WORK/data" -o "$WORK/run" \
  --time-budget "$minutes" --checkpoint-minutes 1 --no-struct --export-half "${TRAIN_ARGS[@]}"
cp "$WORK/run/best-half.json" "$WORK/run/metrics.jsonl" "$OUT"/ 2>/dev/null
# a paper-sized network is 17.6 MiB even in float16 and a file comes back only up to 16 MiB:
# parts of 15 MiB, joined here with `cat best-half.pt.part* > best-half.pt`
[ -f "$WORK/run/best-half.pt" ] && split -b 15M -d "$WORK/run/best-half.pt" "$OUT/best-half.pt.part"

if [ $((DEADLINE - SECONDS)) -gt 120 ] && [ "$QUICK" != 1 ]; then
  step "7. training speed with torch.compile (paper)"
  run "$(limit 200)" python3 benchmarks/train_speed.py --device "$DEVICE" --presets paper --compile \
    --json "$WORK/train_speed_compiled.json"
fi

step "results"
python3 - "$WORK" "$OUT/results.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
results = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
summary = work / "run" / "summary.json"
if summary.is_file():
    results["training"] = {k: v for k, v in json.loads(summary.read_text()).items() if k != "history"}
out.write_text(json.dumps(results, indent=1) + "\n")
print("results:", ", ".join(results) or "none")
EOF
step "done"
rm -rf "$WORK"
