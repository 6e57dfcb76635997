#!/bin/sh
# Runs each example briefly against a model and fails if one exits nonzero or prints nothing on
# stdout.
#   sh examples/run_examples.sh BUILD_DIR MODEL_GGUF [MOE_GGUF]
# BUILD_DIR is the CMake build folder (the examples are in BUILD_DIR/examples). routing runs on
# MOE_GGUF when given (and on the dense model too, where it must say so and exit 0); embed runs
# only if it was built (a C++ compiler was found).
set -u
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 BUILD_DIR MODEL_GGUF [MOE_GGUF]" >&2
    exit 2
fi
bin=$1/examples
model=$2
moe=${3:-}
failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT

# run NAME COMMAND...: runs the command with stdin from /dev/null, checks status and output
run() {
    name=$1
    shift
    "$@" </dev/null >"$out"
    status=$?
    if [ $status -ne 0 ]; then
        echo "FAIL $name: exit status $status" >&2
        failed=1
    elif [ ! -s "$out" ]; then
        echo "FAIL $name: printed nothing" >&2
        failed=1
    else
        echo "ok   $name ($(wc -c <"$out") bytes)"
    fi
}

run simple "$bin/simple" "$model" "Once upon a time"
run streaming "$bin/streaming" -m "$model" -p "Once upon a time" -n 64 -b 5
run game_loop "$bin/game_loop" -m "$model" -p "Once upon a time" -n 20
run routing-dense "$bin/routing" -m "$model" -p "Once upon a time" -n 4
if [ -n "$moe" ]; then
    run routing "$bin/routing" -m "$moe" -p "Once upon a time" -n 8
fi
if [ -x "$bin/embed" ]; then
    run embed "$bin/embed" -m "${moe:-$model}" -p "Once upon a time" -n 32
else
    echo "skip embed (not built: no C++ compiler)"
fi
exit $failed
