#!/bin/bash
# timeout: 300
# Every fuzz harness for a few seconds (issue 8, "Fuzzers"), all in parallel with
# ASan+UBSan: a regression that crashes a parser of untrusted input fails here.
# Longer runs: make fuzz FUZZ_SECONDS=N.
exec "$(dirname "$0")/../fuzz/run" "${QVISOR_FUZZ_SECONDS:-5}"
