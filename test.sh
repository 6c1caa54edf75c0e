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
# The Python binding's tests (python/tests), with the interpreter it was built for, when it was built.
if [ -f build/python/interpreter ]; then
  PYTHONPATH=build/python PYTHONDONTWRITEBYTECODE=1 "$(cat build/python/interpreter)" -m pytest -q -p no:cacheprovider python/tests
else
  echo "test.sh: the Python binding was not built (no pybind11 or Python 3 development files): python/tests skipped"
fi
if [ -x ../shared/conformance/run.sh ]; then
  ../shared/conformance/run.sh build/ckptconv
fi
tests/sanitize.sh
