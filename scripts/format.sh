#!/usr/bin/env bash
# swift format over the project's Swift code, with the rules of .swift-format:
#
#   scripts/format.sh lint     report every finding; exit non-zero if there is one ('make lint'; 'make test' runs
#                              it first when CI=true); then check that the folders of Sources/RabbitMQ depend on
#                              each other one way (scripts/import_graph.py --check)
#   scripts/format.sh format   rewrite the files in place ('make format')
#
# Only swift-format's rules run, not its layout pass (--debug-disable-pretty-print): the code aligns continuation
# lines under their opening parenthesis, which that pass cannot express; it would re-indent some 4,000 lines.
# Indentation and the 120-column limit stay a matter of review.
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

# Folders are searched recursively; hidden ones (.build) are skipped.
PATHS=(Package.swift Sources Tests Samples Benchmarks)
FLAGS=(--recursive --debug-disable-pretty-print)

case "${1:-}" in
lint)
    log "swift format lint --strict ${FLAGS[*]} ${PATHS[*]}"
    swift format lint --strict "${FLAGS[@]}" "${PATHS[@]}"
    log "scripts/import_graph.py --check"
    python3 scripts/import_graph.py --check
    ;;
format)
    log "swift format format --in-place ${FLAGS[*]} ${PATHS[*]}"
    swift format format --in-place "${FLAGS[@]}" "${PATHS[@]}"
    ;;
*)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
