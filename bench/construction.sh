#!/usr/bin/env bash
# construction.sh - the table of docs/CONSTRUCTION.md: stories260K split into experts by every
# construction method and gate, each MoE scored against the dense model on evaluation text.
#
#   bench/construction.sh BUILD_DIR [MODELS_DIR] [OUT_DIR]
#
# BUILD_DIR holds the built tools (tools/llamamoe-convert, -cli, -perplexity); MODELS_DIR is
# ../shared/models by default; OUT_DIR (default /tmp/lmoe-construction) receives the dense model,
# the texts and the MoE files. Prints one markdown row per configuration on stdout; progress on
# stderr. Environment: CONFIGS replaces the grid by lines of "E K METHOD GATE SCALE", SCALE being
# E/K, fit or a number (the default grid is in default_configs below); SEED (default 1) is
# moefy's --seed.
#
# The texts are sampled from the dense model itself with fixed seeds (temperature 1, top-p 0.9,
# 256 tokens per story): calibration from seeds 1000-1039, evaluation from seeds 2000-2019, so
# they are disjoint samples of the same distribution.
set -euo pipefail

build=${1:?usage: construction.sh BUILD_DIR [MODELS_DIR] [OUT_DIR]}
models=${2:-$(dirname "$0")/../../shared/models}
out=${3:-/tmp/lmoe-construction}
convert=$build/tools/llamamoe-convert
cli=$build/tools/llamamoe-cli
ppl=$build/tools/llamamoe-perplexity
mkdir -p "$out"

dense=$out/stories260K.gguf
"$convert" llama2c "$models/stories260K.bin" "$models/tok512.bin" -o "$dense" 2>/dev/null

sample() { # FIRST_SEED COUNT FILE
    : > "$3"
    for ((s = $1; s < $1 + $2; s++)); do
        "$cli" -m "$dense" -n 256 --seed "$s" -t 1 2>/dev/null >> "$3"
        echo >> "$3"
    done
}
calib=$out/calib.txt
eval_text=$out/eval.txt
sample 1000 40 "$calib"
sample 2000 20 "$eval_text"
echo "calibration text: $(wc -c < "$calib") bytes, evaluation text: $(wc -c < "$eval_text") bytes" >&2

dense_ppl=$("$ppl" -m "$dense" -f "$eval_text" -t 2 2>/dev/null | awk '/^perplexity:/ {print $2}')
echo "| dense | - | - | - | 100% | $dense_ppl | 1.000 | 0 |"

default_configs() {
    local e k m g
    for ek in "4 2" "4 1" "2 1" "43 22" "86 43"; do
        for m in random clustering co-activation sharing-inner sharing-inter; do
            for g in random centroid calibrated; do
                for s in E/K fit; do echo "$ek $m $g $s"; done
            done
        done
    done
}

echo "| E | K | method | gate | scale | active FFN | perplexity | top-1 agreement | KL (nats/token) |"
echo "|---|---|---|---|---|---|---|---|---|"
while read -r E K method gate scale; do
    [[ -z "$E" ]] && continue
    moe=$out/moe-$E-$K-$method-$gate-${scale//\//}.gguf
    args=(moefy "$dense" -o "$moe" --experts "$E" --top-k "$K" --method "$method" --gate "$gate"
          --calib "$calib" --seed "${SEED:-1}" -t 2)
    case "$scale" in
        E/K) ;;                        # the default
        *) args+=(--scale "$scale") ;; # fit, or a number
    esac
    if ! log=$("$convert" "${args[@]}" 2>&1); then
        echo "| $E | $K | $method | $gate | $scale | failed: $(tail -1 <<< "$log") | | | |"
        continue
    fi
    active=$(grep -o '[0-9.]*% of the FFN active' <<< "$log" | cut -d' ' -f1)
    res=$("$ppl" -m "$moe" -f "$eval_text" --ref "$dense" -t 2 2>/dev/null)
    p=$(awk '/^perplexity:/ {print $2}' <<< "$res")
    agree=$(awk '/^reference:/ {for (i = 1; i < NF; i++) if ($i == "top1-agreement") print $(i + 1)}' <<< "$res")
    kl=$(awk '/^reference:/ {for (i = 1; i < NF; i++) if ($i == "kl-mean") print $(i + 1)}' <<< "$res")
    printf '| %s | %s | %s | %s | %s | %s | %.3f | %.3f | %.3f |\n' "$E" "$K" "$method" "$gate" \
        "$scale" "$active" "$p" "$agree" "$kl"
    echo "done: $E/$K $method $gate $scale" >&2
    rm -f "$moe"
done < <(if [[ -n "${CONFIGS:-}" ]]; then echo "$CONFIGS"; else default_configs; fi)
