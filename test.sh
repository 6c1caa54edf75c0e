#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the Catch2 suite through ctest, then the
# shared conformance cases (when ../shared/conformance exists) through the CLI, then the suite
# again under AddressSanitizer+UBSan and ThreadSanitizer and a bounded fuzz run (tests/sanitize.sh).
set -euo pipefail
cd "$(dirname "$0")"
source .ci/deps.sh
ckpt_install_deps
ckpt_build
(cd build && ctest --output-on-failure -j"$(nproc)")
if [ -x ../shared/conformance/run.sh ]; then
  ../shared/conformance/run.sh build/ckptconv
fi
tests/sanitize.sh
