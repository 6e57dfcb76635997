#!/bin/sh
# fuzz/afl.sh BUILD_DIR TARGET SECONDS [SEED_DIR...] - fuzzes one target (fuzz_safetensors, ...)
# with AFL++ instead of libFuzzer. The program is the target's replay program
# (tests/CMakeLists.txt: fuzz/TARGET.c + fuzz/replay_main.c, whose stdin mode runs in AFL++'s
# persistent mode), built in BUILD_DIR by AFL++'s compiler with ASan and UBSan; the first run
# configures BUILD_DIR:
#   CC=afl-clang-fast cmake -S . -B BUILD_DIR -DCMAKE_BUILD_TYPE=Debug -DLLAMAMOE_SANITIZE=ON \
#       -DLLAMAMOE_BUILD_BENCH=OFF -DLLAMAMOE_BUILD_EXAMPLES=OFF
# Seeds: tests/fuzz-regress/TARGET/ and every SEED_DIR (fuzz/run.sh's corpora are good ones).
# Findings go to BUILD_DIR/afl-work/TARGET/out/default/crashes/; replay one with
# BUILD_DIR/tests/replay_TARGET FILE. Exits nonzero if AFL++ saved a crash or a hang.
# Needs afl-clang-fast and afl-fuzz (Debian: apt-get install afl++). LMOE_MODELS_DIR as in run.sh.
set -u
if [ $# -lt 3 ]; then
    echo "usage: $0 BUILD_DIR TARGET SECONDS [SEED_DIR...]" >&2
    exit 2
fi
B=$1
T=$2
SECS=$3
shift 3
SRC=$(cd "$(dirname "$0")/.." && pwd)
MODELS=${LMOE_MODELS_DIR:-$SRC/../shared/models}
for tool in afl-clang-fast afl-fuzz; do
    if ! command -v $tool >/dev/null; then
        echo "afl.sh: $tool not found (apt-get install afl++)" >&2
        exit 2
    fi
done
[ -d "$SRC/tests/fuzz-regress/$T" ] || { echo "afl.sh: no target $T" >&2; exit 2; }

mkdir -p "$B" || exit 2
if [ ! -f "$B/CMakeCache.txt" ]; then
    CC=afl-clang-fast cmake -S "$SRC" -B "$B" -DCMAKE_BUILD_TYPE=Debug -DLLAMAMOE_SANITIZE=ON \
        -DLLAMAMOE_BUILD_BENCH=OFF -DLLAMAMOE_BUILD_EXAMPLES=OFF -DLLAMAMOE_MODELS_DIR="$MODELS" \
        >"$B/afl-configure.log" 2>&1 || { tail -n 30 "$B/afl-configure.log"; exit 1; }
fi
cmake --build "$B" -j2 --target "replay_$T" llamamoe-convert >"$B/afl-build.log" 2>&1 ||
    { tail -n 30 "$B/afl-build.log"; exit 1; }

W=$B/afl-work/$T
rm -rf "$W"
mkdir -p "$W/seeds" || exit 1
cp "$SRC/tests/fuzz-regress/$T/"* "$W/seeds/" || exit 1
for d in "$@"; do cp "$d"/* "$W/seeds/" || exit 1; done
# fuzz_state and fuzz_tokenizer read this model (made as run.sh makes it)
MODEL=$B/afl-work/stories260K.gguf
"$B/tools/llamamoe-convert" llama2c "$MODELS/stories260K.bin" "$MODELS/tok512.bin" -o "$MODEL" \
    >/dev/null 2>&1 || { echo "afl.sh: cannot convert stories260K from $MODELS" >&2; exit 1; }

# -m none: ASan reserves terabytes of address space; AFL++ sets the ASAN_OPTIONS it needs.
LMOE_FUZZ_MODEL=$MODEL AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
    afl-fuzz -i "$W/seeds" -o "$W/out" -m none -t 2000 -V "$SECS" -- "$B/tests/replay_$T" \
    >"$W/afl.log" 2>&1
rc=$?
stats=$W/out/default/fuzzer_stats
if [ $rc -ne 0 ] || [ ! -f "$stats" ]; then
    echo "$T: afl-fuzz failed (exit $rc); log $W/afl.log"
    tail -n 20 "$W/afl.log"
    exit 1
fi
field() { awk -F': *' -v k="$1" '$1 ~ "^"k" *$" {print $2}' "$stats"; }
crashes=$(field saved_crashes)
hangs=$(field saved_hangs)
echo "$T: $(field execs_done) execs, $(field execs_per_sec) execs/s, $(field corpus_count) in" \
     "corpus, ${crashes:-?} crashes, ${hangs:-?} hangs ($W/out/default)"
[ "${crashes:-1}" = 0 ] && [ "${hangs:-1}" = 0 ]
