"""Shared pieces of the Python process-level tests: titans.v1 stubs generated at test time (protoc
+ grpc_python_plugin, from Debian), PASS/FAIL bookkeeping ending in "N passed, M failed", free
loopback ports and stopping child processes."""
import os
import signal
import socket
import subprocess
import sys


def titans_stubs(proto_dir, work):
    """Generates the titans.v1 Python stubs under work/stubs; returns (grpc, pb, rpc)."""
    stubs = os.path.join(work, "stubs")
    os.makedirs(stubs, exist_ok=True)
    subprocess.run(["protoc", f"-I{proto_dir}", f"--python_out={stubs}", f"--grpc_out={stubs}",
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                    os.path.join(proto_dir, "titans/v1/titans.proto")], check=True)
    sys.path.insert(0, stubs)
    import grpc
    from titans.v1 import titans_pb2, titans_pb2_grpc
    return grpc, titans_pb2, titans_pb2_grpc


class Checks:
    """check() records one result; finish() prints the summary line and exits 1 on any failure."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(("PASS " if ok else "FAIL ") + name + ("" if ok else f"  {detail}"), flush=True)

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed else 0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs, timeout=60):
    """SIGTERM to every child still running, then wait (kill after `timeout` seconds)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
