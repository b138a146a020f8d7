#!/usr/bin/env bash
# The GPU targets of issues 2 and 3 in one command, for a session that is lent a GPU (about 10 minutes):
#   Tiny Shakespeare, 6x384 GPT, 5,000 iterations -> validation loss <= 1.47   (configs/shakespeare-gpu.toml)
#   Multi30k en->de, base Transformer              -> test_2016_flickr BLEU >= 38 (configs/multi30k-gpu.toml)
# The data sets are not in the repository and ../shared does not travel to the device, so copy them into an
# ignored folder (.gitignore names .gpu-data) first and carry it:
#   mkdir -p .gpu-data && cp ../shared/data/tinyshakespeare/input.txt ../shared/data/multi30k/*.gz .gpu-data/
# then, on the device: bash benchmarks/gpu_checks.sh   (carry [".gpu-data"]; results land in $OUT if set)
# The device's image has torch, tokenizers, sacrebleu, safetensors, matplotlib and tqdm: the package runs
# from the source tree, nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA="${GPU_DATA:-.gpu-data}"
OUT="${OUT:-runs}"
MINUTES="${MULTI30K_MINUTES:-6}"
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
python3 benchmarks/shakespeare.py --config configs/shakespeare-gpu.toml --data "$DATA/input.txt" \
    --out runs/shakespeare-gpu 2>&1 | tee "$OUT/shakespeare-gpu.log"
python3 benchmarks/multi30k.py --config configs/multi30k-gpu.toml --data "$DATA" --minutes "$MINUTES" \
    --out runs/multi30k-gpu 2>&1 | tee "$OUT/multi30k-gpu.log"
