#!/usr/bin/env bash
# Adds up the results in a test log (file $1) into one closing line, "N passed, N failed", so
# the whole suite ends with a single total: cargo's `test result:` lines, Node's `# pass N` /
# `# fail N` (node --test) and Python's `Ran N tests` + `OK` / `FAILED (failures=F, errors=E)`.
set -euo pipefail
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^# pass [0-9]+$/ { p += $3 }
     /^# fail [0-9]+$/ { f += $3 }
     /^Ran [0-9]+ tests? in/ { ran = $2 }
     /^OK/ && ran { p += ran; ran = 0 }
     /^FAILED \(/ { n = split($0, parts, /[=,)]/); ff = 0; for (i = 2; i <= n; i += 2) ff += parts[i]; f += ff; p += ran - ff; ran = 0 }
     END { printf "suite: %d passed, %d failed\n", p, f; exit (f > 0) }' "$1"
