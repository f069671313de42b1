"""Generated gRPC stubs of titans.v1 (scripts/generate-python-stubs.sh; do not edit)."""
