#!/bin/sh
# Turns a dense model into a mixture of experts and lets both tell the same story: builds
# libllamamoe, converts Karpathy's stories260K (a 260K-parameter LLaMA) to GGUF, samples
# calibration text from it, splits every FFN's 172 neurons into 4 experts of 43 with 3 or 2 of
# them per token (co-activation grouping, a gate fitted on the calibration text, the scale fitted
# too: the best training-free choice for 4 experts in docs/CONSTRUCTION.md), then generates
# greedily with the dense model and both MoEs and prints which experts the top-2 MoE used.
#   sh examples/moe_demo.sh [MODELS_DIR]     (default: ../shared/models)
set -eu
cd "$(dirname "$0")/.."
models=${1:-../shared/models}
if [ ! -f "$models/stories260K.bin" ] || [ ! -f "$models/tok512.bin" ]; then
    echo "stories260K is not in $models (see examples/demo.sh for where to get it)" >&2
    exit 1
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 >/dev/null
convert=./build/tools/llamamoe-convert
cli=./build/tools/llamamoe-cli
$convert llama2c "$models/stories260K.bin" "$models/tok512.bin" -o build/stories260K.gguf 2>/dev/null

echo "== calibration text: 40 stories sampled from the dense model (seeds 1000-1039) =="
: > build/calib.txt
for seed in $(seq 1000 1039); do
    $cli -m build/stories260K.gguf -n 256 --seed "$seed" -t 1 2>/dev/null >> build/calib.txt
    echo >> build/calib.txt
done
for k in 2 3; do
    echo "== building the MoE: 4 experts of 43 neurons, $k per token =="
    $convert moefy build/stories260K.gguf -o "build/stories260K-moe-top$k.gguf" --experts 4 \
        --top-k "$k" --method co-activation --gate calibrated --scale fit --calib build/calib.txt \
        --seed 1 2>&1 | tail -n 1
done
echo
echo "== dense: all 172 neurons of every FFN =="
$cli -m build/stories260K.gguf -p "Once upon a time" -n 100 --temp 0 -t 1 2>/dev/null
echo
echo
echo "== MoE, 3 of 4 experts (129 of 172 neurons) per token =="
$cli -m build/stories260K-moe-top3.gguf -p "Once upon a time" -n 100 --temp 0 -t 1 2>/dev/null
echo
echo
echo "== MoE, 2 of 4 experts (86 of 172 neurons) per token: no training, and it shows =="
$cli -m build/stories260K-moe-top2.gguf -p "Once upon a time" -n 100 --temp 0 -t 1 --routing 2>&1 |
    grep -v '^prompt:' | grep -v '^seed:'
