#!/bin/sh
# Checks the shared library's dynamic symbol table: every defined, exported symbol starts with
# lmoe_, the public functions are all there, and the SONAME is libllamamoe.so.MAJOR.
# usage: check_exports.sh LIBRARY EXPECTED_SONAME
set -u
lib=$1
want_soname=$2
fail=0
exports=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVW]$/ {print $3}' | sort)
if [ -z "$exports" ]; then
    echo "FAIL: no exported symbols in $lib"
    exit 1
fi
stray=$(printf '%s\n' "$exports" | grep -v '^lmoe_' || true)
if [ -n "$stray" ]; then
    echo "FAIL: symbols exported without the lmoe_ prefix:"
    printf '  %s\n' $stray
    fail=1
fi
# Every function declared with LMOE_API in the header must be exported.
header=$(dirname "$0")/../include/llamamoe.h
declared=$(grep -o 'lmoe_[a-z0-9_]*(' "$header" | tr -d '(' | sort -u)
for fn in $declared; do
    if ! printf '%s\n' "$exports" | grep -qx "$fn"; then
        echo "FAIL: $fn is declared in llamamoe.h but not exported"
        fail=1
    fi
done
soname=$(objdump -p "$lib" | awk '$1 == "SONAME" {print $2}')
if [ "$soname" != "$want_soname" ]; then
    echo "FAIL: SONAME is '$soname', expected '$want_soname'"
    fail=1
fi
count=$(printf '%s\n' "$exports" | wc -l)
if [ $fail -eq 0 ]; then
    echo "test_exports: $count symbols, all lmoe_*; SONAME $soname: 1 passed, 0 failed"
fi
exit $fail
