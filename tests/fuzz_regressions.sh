#!/bin/sh
# Replays tests/fuzz-regress/<target>/* through every fuzz target built as a plain program
# (replay_<target> = fuzz/<target>.c + fuzz/replay_main.c, no libFuzzer): each input must run
# to the end without a trap (a target's invariant broken), a sanitizer report or a crash.
# usage: fuzz_regressions.sh MODELS_DIR REGRESS_DIR WORK_DIR LLAMAMOE_CONVERT REPLAY...
# It fails when an input fails, when a replay executable has no folder of inputs (or it is
# empty), when a folder has no replay executable, or when a replay ran fewer inputs than its
# folder holds. fuzz_state and fuzz_tokenizer read $LMOE_FUZZ_MODEL: stories260K.bin + tok512.bin
# from MODELS_DIR, converted into WORK_DIR with LLAMAMOE_CONVERT. Without them those two are
# skipped (exit 77 once the rest has passed), except under CI=true, where that is a failure.
set -u
if [ $# -lt 5 ]; then
    echo "usage: fuzz_regressions.sh MODELS_DIR REGRESS_DIR WORK_DIR LLAMAMOE_CONVERT REPLAY..." >&2
    exit 2
fi
models=$1
regress=$2
work=$3
convert=$4
shift 4
mkdir -p "$work" || exit 1
# leaks are failures too (ASan's default on Linux; kept explicit for hosts that differ)
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
export ASAN_OPTIONS UBSAN_OPTIONS

fail=0
skipped=0
passed=0
failed=0

# The model of the targets that need one (fuzz/fuzz_common.h's fuzz_load_env_model).
needs_model() {
    case $1 in fuzz_state | fuzz_tokenizer) return 0 ;; *) return 1 ;; esac
}
model=""
if [ -r "$models/stories260K.bin" ] && [ -r "$models/tok512.bin" ]; then
    model=$work/stories260K.gguf
    if ! "$convert" llama2c "$models/stories260K.bin" "$models/tok512.bin" -o "$model" \
        >"$work/convert.log" 2>&1; then
        echo "FAIL: cannot convert stories260K for the fuzz model:"
        cat "$work/convert.log"
        exit 1
    fi
elif [ "${CI:-}" = true ]; then
    echo "FAIL: $models/stories260K.bin or tok512.bin is missing: fuzz_state and fuzz_tokenizer" \
         "cannot run (CI=true: missing data is a failure)"
    fail=1
else
    echo "SKIP: $models/stories260K.bin or tok512.bin is missing: fuzz_state and fuzz_tokenizer" \
         "are not replayed; set -DLLAMAMOE_MODELS_DIR"
fi

# Every folder of inputs has its replay executable.
targets=""
for exe in "$@"; do
    name=$(basename "$exe")
    targets="$targets ${name#replay_}"
done
for dir in "$regress"/*/; do
    t=$(basename "$dir")
    case " $targets " in
    *" $t "*) ;;
    *)
        echo "FAIL: $regress/$t has no replay executable (is replay_$t built and passed?)"
        fail=1
        ;;
    esac
done

for exe in "$@"; do
    name=$(basename "$exe")
    t=${name#replay_}
    dir=$regress/$t
    n_files=$(find "$dir" -maxdepth 1 -type f ! -name '.*' 2>/dev/null | wc -l | tr -d ' ')
    if [ ! -d "$dir" ] || [ "$n_files" -eq 0 ]; then
        echo "FAIL: $t: no inputs in $dir (each target keeps at least one)"
        fail=1
        failed=$((failed + 1))
        continue
    fi
    if [ ! -x "$exe" ]; then
        echo "FAIL: $t: $exe is missing or not executable"
        fail=1
        failed=$((failed + 1))
        continue
    fi
    if needs_model "$t" && [ -z "$model" ]; then
        if [ "${CI:-}" = true ]; then failed=$((failed + 1)); else skipped=$((skipped + 1)); fi
        continue
    fi
    log=$work/$t.log
    LMOE_FUZZ_MODEL=$model "$exe" "$dir" >"$log" 2>&1
    rc=$?
    n_run=$(grep -c '^replay: .* bytes)$' "$log")
    if [ $rc -ne 0 ] || [ "$n_run" -ne "$n_files" ]; then
        echo "FAIL: $t: exit status $rc after $n_run of $n_files inputs; the last one named" \
             "in the log failed ($log):"
        tail -n 40 "$log"
        fail=1
        failed=$((failed + 1))
    else
        echo "$t: $n_files inputs replayed"
        passed=$((passed + 1))
    fi
done

echo "test_fuzz_regressions: $passed passed, $failed failed, $skipped skipped"
if [ $fail -ne 0 ]; then exit 1; fi
if [ $skipped -ne 0 ]; then exit 77; fi
exit 0
