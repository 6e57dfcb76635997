#!/bin/sh
# fuzz/run.sh BUILD_DIR SECONDS [TARGET...] - runs every libFuzzer target (or the ones named) for
# SECONDS each, one after the other; two calls with different targets can share a build.
# BUILD_DIR is a build configured with CC=clang -DLLAMAMOE_SANITIZE=ON -DLLAMAMOE_FUZZ=ON and built
# (cmake --build BUILD_DIR --target fuzz). Work files go to BUILD_DIR/fuzz-work: stories260K
# converted to GGUF (the model of fuzz_state and fuzz_tokenizer), seeds, corpora, crash files and
# logs. Seeds come from fuzz/seedgen.c and the library's own tools, plus the small shared
# tok512.model (copied into the work folder, never into the source tree); the inputs of
# tests/fuzz-regress/<target>/ join each corpus too. Exits nonzero if any target reports a crash,
# leak, timeout or sanitizer error.
# Environment: LMOE_MODELS_DIR (default: ../shared/models next to the source tree).
set -u
if [ $# -lt 2 ]; then
    echo "usage: $0 BUILD_DIR SECONDS [TARGET...]" >&2
    exit 2
fi
B=$(cd "$1" && pwd) || exit 2
SECS=$2
shift 2
ONLY=" $* "
SRC=$(cd "$(dirname "$0")/.." && pwd)
MODELS=${LMOE_MODELS_DIR:-$SRC/../shared/models}
W=$B/fuzz-work

find_exe() { # the first executable called $1 under the build tree
    find "$B" -name "$1" -type f -perm -u+x 2>/dev/null | head -n 1
}
CONVERT=$(find_exe llamamoe-convert)
SEEDGEN=$(find_exe llamamoe_fuzz_seedgen)
for x in "$CONVERT" "$SEEDGEN"; do
    [ -n "$x" ] || { echo "run.sh: build the 'fuzz' target in $B first" >&2; exit 2; }
done

mkdir -p "$W/corpus-gguf" "$W/corpus-state" "$W/corpus-tokenizer" "$W/corpus-safetensors" \
    "$W/corpus-pytorch" "$W/corpus-spm" "$W/corpus-json" "$W/crashes" || exit 2
MODEL=$W/stories260K.gguf
"$CONVERT" llama2c "$MODELS/stories260K.bin" "$MODELS/tok512.bin" -o "$MODEL" >/dev/null 2>&1 || exit 1

# seeds: a tiny random-weight GGUF (< 64 KiB, fits -max_len), saved states, some texts
"$SEEDGEN" ckpt "$W/tiny.bin" || exit 1
"$CONVERT" llama2c "$W/tiny.bin" "$MODELS/tok512.bin" -o "$W/corpus-gguf/seed-tiny.gguf" >/dev/null 2>&1 \
    || exit 1
"$SEEDGEN" state "$MODEL" "$W/corpus-state" || exit 1
T=$W/corpus-tokenizer
printf 'Once upon a time, there was a little girl.' >"$T/seed-ascii"
printf ' leading and trailing  spaces \n\ttabs' >"$T/seed-space"
printf 'caf\303\251 \344\270\255\346\226\207 \360\237\230\200' >"$T/seed-utf8"
printf 'bad \377\376 \300\200 \355\240\200 trunc \342\202' >"$T/seed-invalid"
printf 'nul\000inside\000' >"$T/seed-nul"
# the converter's readers: files written by seedgen, and the real tok512 SentencePiece model
"$SEEDGEN" safetensors "$W/corpus-safetensors" || exit 1
"$SEEDGEN" pytorch "$W/corpus-pytorch" || exit 1
"$SEEDGEN" spm "$W/corpus-spm" || exit 1
"$SEEDGEN" json "$W/corpus-json" || exit 1
cp "$MODELS/tok512.model" "$W/corpus-spm/seed-tok512.model" || exit 1
# known hostile inputs as seeds too: mutations of them reach the checks they were made for
for d in "$SRC"/tests/fuzz-regress/*/; do
    t=$(basename "$d")
    case $t in
    fuzz_gguf_model) c=gguf ;;
    fuzz_*) c=${t#fuzz_} ;;
    *) continue ;;
    esac
    [ -d "$W/corpus-$c" ] && cp "$d"* "$W/corpus-$c/" 2>/dev/null
done

export LMOE_FUZZ_MODEL="$MODEL"
# ASan's leak check stays on (libFuzzer reports leaks per input with -detect_leaks=1, the default)
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

status=0
run_target() { # name max_len corpus
    case $ONLY in "  " | *" $1 "*) ;; *) return ;; esac
    exe=$(find_exe "$1")
    if [ -z "$exe" ]; then
        echo "run.sh: $1 not built" >&2
        status=1
        return
    fi
    log=$W/$1.log
    mkdir -p "$W/crashes/$1"
    "$exe" "$3" -max_total_time="$SECS" -max_len="$2" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$W/crashes/$1/" >"$log" 2>&1
    rc=$?
    execs=$(grep 'stat::number_of_executed_units' "$log" | awk '{print $2}')
    speed=$(grep 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    if [ $rc -ne 0 ] || grep -q 'ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error:\|ERROR: libFuzzer\|==ERROR' "$log"; then
        echo "$1: FAILED (exit $rc) after ${execs:-?} execs; log $log, inputs in $W/crashes/$1/"
        grep -m 1 -A 30 'ERROR\|runtime error' "$log"
        status=1
    else
        echo "$1: ok, ${execs:-?} execs, ${speed:-?} execs/s, $cov"
    fi
}
run_target fuzz_gguf_model 65536 "$W/corpus-gguf"
run_target fuzz_state 65536 "$W/corpus-state"
run_target fuzz_tokenizer 4096 "$W/corpus-tokenizer"
run_target fuzz_safetensors 65536 "$W/corpus-safetensors"
run_target fuzz_pytorch 65536 "$W/corpus-pytorch"
run_target fuzz_spm 65536 "$W/corpus-spm"
run_target fuzz_json 65536 "$W/corpus-json"
exit $status
