#!/usr/bin/env bash
# The library's documentation ('make docs'): the DocC archive of the RabbitMQ target, with the articles of
# Sources/RabbitMQ/RabbitMQ.docc, in .docs/RabbitMQ.doccarchive (git-ignored).
#
#   scripts/docs.sh [swift package options…]   e.g. scripts/docs.sh --scratch-path .build
#
# The options go to 'swift package' (make test passes its build flags, so that the library is not built again).
# To browse it: RABBITMQ_DOCS=1 swift package --disable-sandbox preview-documentation --target RabbitMQ
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

# The manifest adds the documentation plugin only when this is set.
export RABBITMQ_DOCS=1
# DocC moves the archive into place, so the folder must exist.
mkdir -p .docs
log "swift package $* generate-documentation --target RabbitMQ (into .docs/RabbitMQ.doccarchive)"
swift package "$@" --allow-writing-to-directory .docs \
    generate-documentation --target RabbitMQ --warnings-as-errors --output-path .docs/RabbitMQ.doccarchive
