#!/usr/bin/env bash
# The GPU path, measured: CLIP backfill with a ViT-B/32-sized model (CLIPConfig defaults, random
# weights, no hub) on CUDA in float16, against the best plain loop (a torch DataLoader with a worker
# per core decoding with Image.draft, the model in float16 on the same GPU), over 1024x768 JPEG photos. Prints images/s of
# both, the ratio, and the GPU's utilisation while pgsight ran (nvidia-smi, sampled every 200 ms).
# Takes under 5 minutes on a GPU machine. Needs a CUDA build of torch in the venv (the Makefile pins
# a CPU one): PY=/path/to/python bench/gpu_check.sh
#
#     bench/gpu_check.sh [--images 2000] [--rounds 2]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
IMAGES=2000
ROUNDS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --images) IMAGES=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "usage: bench/gpu_check.sh [--images N] [--rounds N]" >&2; exit 64 ;;
  esac
done
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: torch $("$PY" -c 'import torch; print(torch.__version__)') sees no CUDA device: nothing measured." >&2
  echo "gpu_check: run it on a machine with an NVIDIA GPU and a CUDA build of torch (PY=... bench/gpu_check.sh)." >&2
  exit 2
fi
if ! command -v nvidia-smi >/dev/null; then
  echo "gpu_check: nvidia-smi not found: GPU utilisation will not be reported" >&2
fi
OUTDIR=bench/out
mkdir -p "$OUTDIR"
SAMPLES="$OUTDIR/gpu_util.csv"
: > "$SAMPLES"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 > "$SAMPLES" &
  SMI=$!
  trap 'kill $SMI 2>/dev/null || true' EXIT
fi
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
timeout 290 "$PY" bench/bench_decode.py --models clip --clip vitb32 --device cuda --images "$IMAGES" --big 0 \
  --rounds "$ROUNDS" --batch 256 --no-plain1 --label gpu
if [ -n "${SMI:-}" ]; then
  kill "$SMI" 2>/dev/null || true
  "$PY" - "$SAMPLES" <<'PY'
import sys
vals = [float(line.split(",")[1]) for line in open(sys.argv[1]) if line.count(",") >= 2 and line.split(",")[1].strip()]
busy = [v for v in vals if v > 0]
if vals:
    print(f"gpu_check: GPU utilisation over the run: mean {sum(vals) / len(vals):.0f} %, "
          f"mean while busy {sum(busy) / max(1, len(busy)):.0f} %, max {max(vals):.0f} % ({len(vals)} samples)")
PY
fi
"$PY" - <<'PY'
import json
r = json.load(open("bench/out/decode-gpu.json"))["results"]["clip 1024x768"]
print(f"gpu_check: plain loop (DataLoader + draft, fp16) {r['plain_mp']} images/s, pgsight {r['pgsight']} images/s, "
      f"ratio {r['ratio_pgsight_over_plain_mp']}x (goal >= 0.9)")
PY
