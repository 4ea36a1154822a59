#!/usr/bin/env bash
# The device check, one prepared script for a GPU machine without network (see BENCHMARKS.md, "GPU path").
#
#   bench/gpu_check.sh OUTDIR [--dry-run]       run it (on the GPU machine, from the repository root)
#   bench/gpu_check.sh --build-wheelhouse       here, with the package registry: fill bench/wheelhouse/part-N/
#
# Steps, each writing to OUTDIR: install from bench/wheelhouse/ (no index; torch, torchvision and numpy are the
# machine's own), the CUDA tests (pytest -m cuda), the model bench (bench/gpu_model.py: model alone, GPU JPEG
# decode + model, CPU decode || GPU model), and end-to-end streaming runs on a private local stack
# (bench/run_all.py --only streaming default: classify alone, then the default pipeline classify + faces) with
# nvidia-smi sampling GPU utilisation throughout; summary.md at the end says whether the workers decoded their
# JPEGs on the GPU (visionstream_device_decoded_images, stage device_decode:<model>).
# --dry-run runs every step on a CPU machine: pip resolves without installing, the CUDA tests skip, the model
# bench runs on the CPU (the device-decode code path with torchvision's CPU decoder), the streaming runs are
# small (and decode on the CPU: a CPU worker never decodes on its device), and nvidia-smi is left out.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WHEELHOUSE="$ROOT/bench/wheelhouse"
PART_LIMIT_MB=60  # the device tool carries at most 64 MiB of ignored paths per call

if [[ "${1:-}" == "--build-wheelhouse" ]]; then
    PY="${PYTHON:-$ROOT/.venv/bin/python}"
    rm -rf "$WHEELHOUSE" && mkdir -p "$WHEELHOUSE/all"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform any -d "$WHEELHOUSE/all" -r <(grep -v '^numpy$' "$ROOT/bench/gpu_requirements.txt") \
        -r "$ROOT/bench/gpu_requirements_faces.txt"
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELHOUSE/all" "$ROOT"
    # Split into parts under the carry limit, largest first (one part per `run` call on a warm machine).
    part=1 size=0
    mkdir -p "$WHEELHOUSE/part-1"
    while read -r bytes wheel; do
        if (( size > 0 && size + bytes > PART_LIMIT_MB * 1024 * 1024 )); then
            part=$((part + 1)) size=0
            mkdir -p "$WHEELHOUSE/part-$part"
        fi
        mv "$WHEELHOUSE/all/$wheel" "$WHEELHOUSE/part-$part/"
        size=$((size + bytes))
    done < <(cd "$WHEELHOUSE/all" && find . -name '*.whl' -printf '%s %f\n' | sort -rn)
    rmdir "$WHEELHOUSE/all"
    du -sh "$WHEELHOUSE"/part-*
    exit 0
fi

OUT="${1:?usage: bench/gpu_check.sh OUTDIR [--dry-run] | --build-wheelhouse}"
DRY=false
[[ "${2:-}" == "--dry-run" ]] && DRY=true
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
PY="${PYTHON:-$(command -v python3)}"
# Outside a venv, make one that sees the machine's torch (--system-site-packages), so pip never touches the
# system's packages (PEP 668 machines refuse that anyway).
if [[ "$("$PY" -c 'import sys; print(sys.prefix != sys.base_prefix)')" == False ]]; then
    [[ -x "$ROOT/.venv-gpu/bin/python" ]] || "$PY" -m venv --system-site-packages "$ROOT/.venv-gpu"
    PY="$ROOT/.venv-gpu/bin/python"
fi
export VISIONSTREAM_TEST_ASSETS="${VISIONSTREAM_TEST_ASSETS:-$(cd "$ROOT/.." && pwd)/shared/assets}"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }
step() {  # step NAME COMMAND...: run it, its output in OUT/NAME.txt, its status in the summary; never abort
    local name="$1"; shift
    log "$name: $*"
    local started=$SECONDS status=0
    "$@" > "$OUT/$name.txt" 2>&1 || status=$?
    log "$name: exit $status after $((SECONDS - started)) s"
    echo "| $name | $status | $((SECONDS - started)) s |" >> "$OUT/steps.md"
}
printf '| step | exit | time |\n|---|---|---|\n' > "$OUT/steps.md"
log "gpu_check in $ROOT, python $PY, dry run: $DRY"

# 1. The machine: torch must be there already (the wheels of torch with CUDA are ~3 GB: never carried).
step machine "$PY" -c "import sys, torch, torchvision; print(sys.version); print('torch', torch.__version__,
'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
if ! $DRY; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || { log "no CUDA device visible to torch: stopping (use --dry-run on a CPU machine)"; exit 2; }
    command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi

# 2. Install from the carried wheels, no index. (pip skips what is installed already.)
links=()
for part in "$WHEELHOUSE"/part-*; do [[ -d "$part" ]] && links+=(--find-links "$part"); done
if (( ${#links[@]} == 0 )); then
    log "no bench/wheelhouse/part-*: nothing to install from (bench/gpu_check.sh --build-wheelhouse, then carry it)"
fi
pip_install=("$PY" -m pip install --no-index "${links[@]}")
$DRY && pip_install+=(--dry-run)
step install-deps "${pip_install[@]}" -r bench/gpu_requirements.txt
step install-faces "${pip_install[@]}" --no-deps -r bench/gpu_requirements_faces.txt
if $DRY || ! "$PY" -c "import visionstream" 2> /dev/null; then
    step install-visionstream "${pip_install[@]}" --no-deps visionstream
fi

# GPU utilisation for the rest of the run, every 500 ms.
SMI_PID=""
if ! $DRY && command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used --format=csv,noheader,nounits \
        -lms 500 > "$OUT/gpu_utilisation.csv" &
    SMI_PID=$!
fi
mark() { [[ -n "$SMI_PID" ]] && wc -l < "$OUT/gpu_utilisation.csv" || echo 0; }

# 3. The CUDA tests (they skip on a CPU machine) and the device-decode tests that run on any machine.
step cuda-tests "$PY" -m pytest tests/unit -m cuda -q -p no:cacheprovider
step device-decode-tests "$PY" -m pytest tests/unit/test_device_decode.py -q -p no:cacheprovider

# 4. The model bench.
model_start=$(mark)
if $DRY; then
    step model-bench "$PY" bench/gpu_model.py --device cpu --batch-sizes 8 --seconds 0.5 --no-compile \
        --json "$OUT/model.json"
else
    step model-bench "$PY" bench/gpu_model.py --device cuda --batch-sizes 32 128 256 --seconds 3 \
        --json "$OUT/model.json"
fi
model_end=$(mark)

# 5. End to end on a private local stack: large batches, several in flight, decode threads for the headers
# and the CPU fallbacks. No frames: classify alone, then classify + faces (the default; identification off:
# no dlib here, and nobody is enrolled).
export VISIONSTREAM_FRAME_ANALYZERS="" VISIONSTREAM_FACE_EMBEDDER=inception_resnet_v1
if $DRY; then
    keys=200 default_keys=60
else
    keys=20000 default_keys=3000
    export VISIONSTREAM_BATCH_SIZE=256 VISIONSTREAM_BATCHES_IN_FLIGHT=4 VISIONSTREAM_DECODE_WORKERS=8
    export VISIONSTREAM_S3_CONCURRENCY=256 VISIONSTREAM_MAX_BATCH_DELAY=0.02
fi
e2e_start=$(mark)
step streaming "$PY" bench/run_all.py --only streaming default --keys "$keys" --default-keys "$default_keys" \
    --no-write --no-profile --json "$OUT/streaming.json"
e2e_end=$(mark)

[[ -n "$SMI_PID" ]] && kill "$SMI_PID" 2> /dev/null || true

# 6. Summary: img/s, GPU utilisation per phase, per-stage times.
"$PY" - "$OUT" "$model_start" "$model_end" "$e2e_start" "$e2e_end" <<'EOF' | tee "$OUT/summary.md"
import csv, json, sys
from pathlib import Path

out = Path(sys.argv[1])
model_rows, e2e_rows = (int(sys.argv[2]), int(sys.argv[3])), (int(sys.argv[4]), int(sys.argv[5]))
print("# bench/gpu_check.sh\n")
print((out / "steps.md").read_text())
machine = (out / "machine.txt").read_text().strip() if (out / "machine.txt").exists() else "?"
print(f"Machine: {machine}\n")
samples = []
if (out / "gpu_utilisation.csv").exists():
    samples = [row for row in csv.reader((out / "gpu_utilisation.csv").open()) if len(row) >= 4]
def utilisation(rows):
    part = samples[rows[0]:rows[1]]
    if not part:
        return "not sampled (no nvidia-smi)"
    busy = [float(r[1]) for r in part]
    return f"mean {sum(busy) / len(busy):.0f}%, max {max(busy):.0f}% over {len(part)} samples"
if (out / "model.json").exists():
    model = json.loads((out / "model.json").read_text())
    print(f"## Model ({model['device']}, {model['precision']}, compiled {model['compiled']}); "
          f"GPU utilisation {utilisation(model_rows)}\n")
    keys = list(model["rows"][0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in model["rows"]:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    print(f"\nA worker's decode thread, core-ms per image: {model.get('decode thread core-ms per image')}\n")
if (out / "streaming.json").exists():
    run = json.loads((out / "streaming.json").read_text())
    print(f"## End to end (streaming, {run.get('keys')} keys); GPU utilisation {utilisation(e2e_rows)}\n")
    for name, what in (("streaming_1", "classify, 1 worker"), ("streaming_2", "classify, 2 workers"),
                       ("streaming_default", "classify + faces (the default), 1 worker")):
        r = run.get(name)
        if r:
            decoded = r.get("device_decoded") or {}
            print(f"- {name} ({what}): {r['img/s']} img/s steady, {r['results']} results, {r['errors']} errors; "
                  f"JPEGs decoded on the device {decoded.get('decoded', 0)}, refused there and decoded on the CPU "
                  f"{decoded.get('refused', 0)}; CPU per image {r.get('cpu_ms_per_image')}")
            for stage, v in (r.get("stages") or {}).items():
                print(f"  - {stage}: {v['calls']} calls, {v['ms_per_call']} ms per call, {v['seconds']} s")
EOF
log "done: $OUT/summary.md"
