#!/bin/sh
# Builds libllamamoe, converts Karpathy's stories260K (a 260K-parameter LLaMA trained on
# TinyStories) to GGUF, and generates a story with it.
#   sh examples/demo.sh [MODELS_DIR]     (default: ../shared/models)
set -eu
cd "$(dirname "$0")/.."
models=${1:-../shared/models}
if [ ! -f "$models/stories260K.bin" ] || [ ! -f "$models/tok512.bin" ]; then
    cat >&2 <<MSG
stories260K is not in $models.
Get stories260K.bin and tok512.bin from https://huggingface.co/karpathy/tinyllamas (folder
stories260K/) and run: sh examples/demo.sh FOLDER_WITH_THEM
MSG
    exit 1
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 >/dev/null
./build/tools/llamamoe-convert llama2c "$models/stories260K.bin" "$models/tok512.bin" -o build/stories260K.gguf
./build/tools/llamamoe-cli -m build/stories260K.gguf -p "Once upon a time" -n 200 --temp 0.8 --seed 42
