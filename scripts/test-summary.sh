#!/usr/bin/env bash
# Adds up the `test result:` lines of cargo test output (file $1) into one closing line,
# "N passed, N failed", so the whole suite ends with a single total.
set -euo pipefail
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "suite: %d passed, %d failed\n", p, f; exit (f > 0) }' "$1"
