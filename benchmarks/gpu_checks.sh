#!/usr/bin/env bash
# The GPU targets of issues 2 and 3 in one command, for a session that is lent a GPU:
#   Tiny Shakespeare, 6x384 GPT, 5,000 iterations -> validation loss <= 1.47   (configs/shakespeare-gpu.toml)
#   Multi30k en->de, base Transformer              -> test_2016_flickr BLEU >= 38 (configs/multi30k-gpu.toml)
# A session has 15 minutes of device time in all (the machine's start included) and 10 minutes per command,
# so the two run side by side on the one GPU (neither model fills an H200), each under its own time limit
# so that a slow one cannot take the other's log with it. Expected: about 8 minutes in all.
#
# The data sets are not in the repository and ../shared does not travel to the device, so copy them into an
# ignored folder (.gitignore names .gpu-data) first and carry it:
#   mkdir -p .gpu-data && cp ../shared/data/tinyshakespeare/input.txt ../shared/data/multi30k/*.gz .gpu-data/
# then, on the device: bash benchmarks/gpu_checks.sh   (carry [".gpu-data"], timeout_s 560)
#   bash benchmarks/gpu_checks.sh shakespeare   or   ... multi30k   runs one of the two.
# The device's image has torch, tokenizers, sacrebleu, safetensors, matplotlib and tqdm: the package runs
# from the source tree, nothing is installed. Logs and each run's benchmark.json land in $OUT (or runs/).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA="${GPU_DATA:-.gpu-data}"
OUT="${OUT:-runs}"
MINUTES="${MULTI30K_MINUTES:-6}"       # training budget; test-set decoding comes after it
WHICH="${1:-all}"
case "$WHICH" in all|shakespeare|multi30k) ;; *)
    echo "gpu_checks.sh: expected all, shakespeare or multi30k, not '$WHICH'" >&2; exit 2 ;;
esac
mkdir -p "$OUT" runs
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

shakespeare() {
    timeout 500 python3 benchmarks/shakespeare.py --config configs/shakespeare-gpu.toml --data "$DATA/input.txt" \
        --out runs/shakespeare-gpu > "$OUT/shakespeare-gpu.log" 2>&1
    local rc=$?
    cp runs/shakespeare-gpu/benchmark.json "$OUT/shakespeare-gpu.json" 2>/dev/null
    return $rc
}

multi30k() {
    timeout 530 python3 benchmarks/multi30k.py --config configs/multi30k-gpu.toml --data "$DATA" \
        --minutes "$MINUTES" --out runs/multi30k-gpu > "$OUT/multi30k-gpu.log" 2>&1
    local rc=$?
    cp runs/multi30k-gpu/benchmark.json "$OUT/multi30k-gpu.json" 2>/dev/null
    return $rc
}

status=0
case "$WHICH" in
    shakespeare) shakespeare || status=$? ;;
    multi30k) multi30k || status=$? ;;
    all)
        shakespeare & s=$!
        multi30k & m=$!
        wait $s || status=$?
        wait $m || status=$?
        ;;
esac
for log in "$OUT"/shakespeare-gpu.log "$OUT"/multi30k-gpu.log; do
    [ -f "$log" ] && { echo "== $log"; tail -n 25 "$log"; }
done
exit $status
