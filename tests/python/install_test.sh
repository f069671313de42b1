#!/usr/bin/env bash
# `pip install ./python` works offline: into a fresh virtual environment that sees Debian's
# grpcio and protobuf (--system-site-packages), with the package index unreachable (--no-index),
# as a wheel (with the torch extra, met by Debian's python3-torch) and as an editable install;
# the installed package imports, states the project's version and carries its stubs.
#
# Usage: install_test.sh SOURCE_DIR
set -euo pipefail
source_dir="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
version="$(cat "$source_dir/VERSION")"
check() {  # check VENV
  (cd "$work" && "$1/bin/python" - "$version" <<'PY'
import sys
import titans, titans.aio
from titans.v1 import titans_pb2, titans_pb2_grpc
import titans_torch
assert titans_torch.TitansModel
assert titans.__version__ == sys.argv[1], (titans.__version__, sys.argv[1])
assert titans_pb2.DESCRIPTOR.package == "titans.v1"
from importlib import metadata
assert metadata.version("titans") == sys.argv[1]
assert metadata.metadata("titans")["License"] == "Apache-2.0"
print("imported titans", titans.__version__, "from", titans.__file__)
PY
  )
}
# The build backend's own reader of pyproject.toml (for Python < 3.11, which has no tomllib)
# reads what tomllib reads.
/usr/bin/python3 - "$source_dir/python" <<'PY'
import sys, tomllib
sys.path.insert(0, sys.argv[1] + "/_build")
import titans_build
text = open(sys.argv[1] + "/pyproject.toml").read()
assert titans_build._read_project_table(text) == tomllib.loads(text)["project"]
PY
/usr/bin/python3 -m venv --system-site-packages "$work/venv"
PIP_NO_INDEX=1 "$work/venv/bin/pip" install --quiet --disable-pip-version-check \
  "$source_dir/python[torch]"
check "$work/venv"
case "$("$work/venv/bin/python" -c 'import titans; print(titans.__file__)')" in
  "$work"/venv/*) ;;
  *) echo "FAIL: not imported from the installed copy" >&2; exit 1 ;;
esac
/usr/bin/python3 -m venv --system-site-packages "$work/editable"
PIP_NO_INDEX=1 "$work/editable/bin/pip" install --quiet --disable-pip-version-check \
  --editable "$source_dir/python"
check "$work/editable"
case "$("$work/editable/bin/python" -c 'import titans; print(titans.__file__)')" in
  "$source_dir"/python/*) ;;
  *) echo "FAIL: the editable install does not import the sources" >&2; exit 1 ;;
esac
echo "pip install ./python: wheel and editable installs work offline"
