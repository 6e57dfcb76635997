#!/bin/sh
# Checks the shared library's dynamic symbol table against the published ABI:
#  - every defined, exported symbol starts with lmoe_;
#  - the exported symbols are exactly those listed in include/llamamoe.symbols (added and missing
#    names are printed), and that list is sorted and has no duplicates;
#  - every function declared with LMOE_API in include/llamamoe.h is in the list and exported;
#  - the header defines LMOE_VERSION_MAJOR/MINOR/PATCH, and the SONAME is libllamamoe.so.MAJOR
#    (the one the build expects, and the header's major version).
# usage: check_exports.sh LIBRARY EXPECTED_SONAME
# POSIX sh. `nm -D --defined-only` and `objdump -p` read any ELF file, so the host's binutils also
# check the library of a cross build (aarch64 under qemu).
set -u
if [ $# -ne 2 ]; then
    echo "usage: check_exports.sh LIBRARY EXPECTED_SONAME" >&2
    exit 2
fi
lib=$1
want_soname=$2
fail=0
LC_ALL=C
export LC_ALL

include=$(dirname "$0")/../include
header=$include/llamamoe.h
symbols=$include/llamamoe.symbols
for f in "$lib" "$header" "$symbols"; do
    if [ ! -r "$f" ]; then
        echo "FAIL: cannot read $f"
        exit 1
    fi
done

# Lines of the first argument that are not lines of the second (both newline-separated lists).
minus() {
    printf '%s\n' "$1" | MINUS_OTHER=$2 awk '
        BEGIN {
            n = split(ENVIRON["MINUS_OTHER"], o, "\n")
            for (i = 1; i <= n; i++) have[o[i]] = 1
        }
        $0 != "" && !($0 in have)'
}

# Defined symbols of the dynamic symbol table: code (T), data (D, B, R, G, S), weak (V, W),
# indirect functions (i) and unique globals (u). Not A: the version nodes of a version script.
# Newer binutils print versioned names as name@@VERSION or name@VERSION; the version is dropped.
nm_out=$(nm -D --defined-only "$lib") || { echo "FAIL: nm -D --defined-only $lib failed"; exit 1; }
exports=$(printf '%s\n' "$nm_out" |
    awk 'NF >= 3 && $2 ~ /^[TDBRGSVWiu]$/ { sub(/@.*/, "", $3); print $3 }' | sort -u)
if [ -z "$exports" ]; then
    echo "FAIL: no exported symbols in $lib"
    exit 1
fi
stray=$(printf '%s\n' "$exports" | grep -v '^lmoe_' || true)
if [ -n "$stray" ]; then
    echo "FAIL: symbols exported without the lmoe_ prefix:"
    printf '%s\n' "$stray" | sed 's/^/  /'
    fail=1
fi

# The ABI list: one symbol a line; '#' starts a comment; blank lines are ignored.
listed_raw=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$symbols" | grep -v '^$' || true)
if [ -z "$listed_raw" ]; then
    echo "FAIL: $symbols lists no symbols"
    exit 1
fi
if ! printf '%s\n' "$listed_raw" | sort -c 2>/dev/null; then
    echo "FAIL: $symbols is not sorted (LC_ALL=C sort order)"
    fail=1
fi
dups=$(printf '%s\n' "$listed_raw" | sort | uniq -d)
if [ -n "$dups" ]; then
    echo "FAIL: listed more than once in $symbols:"
    printf '%s\n' "$dups" | sed 's/^/  /'
    fail=1
fi
listed=$(printf '%s\n' "$listed_raw" | sort -u)

added=$(minus "$exports" "$listed")
missing=$(minus "$listed" "$exports")
if [ -n "$added" ]; then
    echo "FAIL: exported by the library but not in include/llamamoe.symbols (add them there):"
    printf '%s\n' "$added" | sed 's/^/  + /'
    fail=1
fi
if [ -n "$missing" ]; then
    echo "FAIL: in include/llamamoe.symbols but not exported (an ABI break; removing a symbol" \
         "needs a new major version):"
    printf '%s\n' "$missing" | sed 's/^/  - /'
    fail=1
fi

# Functions declared with LMOE_API in the header: comments and preprocessor lines (the LMOE_API
# definitions among them) are removed, the rest joined into one line, and for each LMOE_API the
# last identifier before the first '(' that follows it is the function's name.
declared=$(awk '
    { text = text $0 "\n" }
    END {
        out = ""
        while ((i = index(text, "/*")) > 0) {
            out = out substr(text, 1, i - 1) " "
            text = substr(text, i + 2)
            j = index(text, "*/")
            if (j == 0) { text = ""; break }
            text = substr(text, j + 2)
        }
        text = out text
        n = split(text, lines, "\n")
        code = ""; cont = 0
        for (k = 1; k <= n; k++) {
            line = lines[k]
            if (cont || line ~ /^[ \t]*#/) { cont = (line ~ /\\[ \t]*$/); continue }
            sub(/\/\/.*/, "", line)
            code = code " " line
        }
        while (match(code, /LMOE_API[^;{(]*\(/)) {
            decl = substr(code, RSTART, RLENGTH - 1)
            code = substr(code, RSTART + RLENGTH)
            sub(/[ \t]+$/, "", decl)
            sub(/.*[^A-Za-z0-9_]/, "", decl)
            print decl
        }
    }' "$header" | sort -u)
if [ -z "$declared" ]; then
    echo "FAIL: found no LMOE_API function declarations in $header"
    fail=1
fi
n_declared=0
for fn in $declared; do
    n_declared=$((n_declared + 1))
    if ! printf '%s\n' "$listed" | grep -qx "$fn"; then
        echo "FAIL: $fn is declared LMOE_API in llamamoe.h but not listed in llamamoe.symbols"
        fail=1
    fi
    if ! printf '%s\n' "$exports" | grep -qx "$fn"; then
        echo "FAIL: $fn is declared LMOE_API in llamamoe.h but not exported"
        fail=1
    fi
done

# The header's version macros, and the SONAME's major version.
major=""
for part in MAJOR MINOR PATCH; do
    sp='[[:space:]]'
    value=$(sed -n "s/^$sp*#$sp*define$sp$sp*LMOE_VERSION_$part$sp$sp*\([0-9][0-9]*\)$sp*\$/\1/p" \
        "$header" | head -n 1)
    if [ -z "$value" ]; then
        echo "FAIL: llamamoe.h does not define LMOE_VERSION_$part as a number"
        fail=1
    elif [ "$part" = MAJOR ]; then
        major=$value
    fi
done
soname=$(objdump -p "$lib" | awk '$1 == "SONAME" {print $2}')
if [ "$soname" != "$want_soname" ]; then
    echo "FAIL: SONAME is '$soname', expected '$want_soname'"
    fail=1
fi
if [ -n "$major" ] && [ "$soname" != "libllamamoe.so.$major" ]; then
    echo "FAIL: SONAME is '$soname', but llamamoe.h says LMOE_VERSION_MAJOR $major"
    fail=1
fi

count=$(printf '%s\n' "$exports" | wc -l | tr -d ' ')
if [ $fail -eq 0 ]; then
    echo "test_exports: $count symbols, all lmoe_*, equal to llamamoe.symbols;" \
         "$n_declared LMOE_API functions listed; SONAME $soname: 1 passed, 0 failed"
fi
exit $fail
