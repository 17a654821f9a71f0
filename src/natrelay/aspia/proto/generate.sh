#!/usr/bin/env bash
# Regenerates the committed *_pb2.py modules and their *_pb2.pyi typing stubs.
# Tests and the runtime never need protoc; run this only after editing a .proto.
#
# Needs: python3 -m pip install grpcio-tools mypy-protobuf
# (grpcio-tools bundles protoc; mypy-protobuf provides protoc-gen-mypy).
#
# protoc runs from src/ so every file is registered as natrelay/aspia/proto/<name>.proto
# and the generated cross-file imports are absolute package imports
# (from natrelay.aspia.proto import common_pb2) rather than bare top-level ones.
# The wire format does not depend on these file names; the package stays `proto`
# as the Aspia spec requires.
set -euo pipefail
cd "$(dirname "$0")/../../.."   # -> src/
python3 -m grpc_tools.protoc -I . \
    --python_out=. --mypy_out=. \
    natrelay/aspia/proto/*.proto
# ruff lints .pyi stubs and pyproject only excludes *_pb2.py: silence the generated stubs
# file-wide, and drop their flake8-pyi "# noqa: Y015" markers, which ruff reports as
# unknown codes (RUF102) even under a file-wide noqa.
for stub in natrelay/aspia/proto/*_pb2.pyi; do
    body="$(sed -e 's/  # noqa: Y015$//' "$stub")"
    printf '# ruff: noqa\n%s\n' "$body" > "$stub"
done
python3 -m grpc_tools.protoc --version
