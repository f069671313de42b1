"""Fixtures for the titans client tests: a real titans-server started once for the module, with
bearer tokens required, and a scripted in-process fake server for what a real one cannot be made
to do on demand (fail with UNAVAILABLE, show the metadata and deadline a call arrived with).

Environment (set by CTest): TITANS_SERVER (the titans-server binary), TITANS_MODEL_DIR.
"""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
import pytest

from titans.v1 import titans_pb2 as pb
from titans.v1 import titans_pb2_grpc as rpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pyutil"))
from titans_testutil import free_port, stop  # noqa: E402

TOKEN = "token-of-alice"
OTHER_TOKEN = "token-of-bob"


@contextlib.contextmanager
def running_server(model_dir, extra=()):
    """A titans-server on a free loopback port serving `model_dir`; yields its address."""
    work = tempfile.mkdtemp(prefix="titans_py_")
    port = free_port()
    log_path = os.path.join(work, "server.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [os.environ["TITANS_SERVER"], f"--port={port}", "--host=127.0.0.1",
             f"--model_dir={model_dir}", f"--state_dir={work}/state",
             f"--snapshot_dir={work}/snapshots", "--metrics_port=-1",
             "--shutdown_grace_seconds=5", *extra],
            stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    # Ready when the port accepts connections (whatever the server's TLS settings); fails at
    # once if the server exits (a model it refuses, a bad flag).
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(open(log_path).read())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("server not ready after 60 s: " + open(log_path).read())
            time.sleep(0.1)
    try:
        yield address
    finally:
        stop([proc])
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def server_address(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"{TOKEN} alice\n{OTHER_TOKEN} bob\n")
    with running_server(os.environ["TITANS_MODEL_DIR"],
                        [f"--auth_tokens_file={tokens}"]) as address:
        yield address


class ScriptedServicer(rpc.TitansServicer):
    """Answers CreateSession, GetSession, GetModel, Append and CloseSession; each call first takes the next
    status from `failures[method]` (if any) and fails with it. Records every call's method,
    metadata and time remaining before its deadline."""

    def __init__(self):
        self.failures = {}
        self.calls = []
        self.lock = threading.Lock()

    def _enter(self, method, context):
        with self.lock:
            self.calls.append((method, dict(context.invocation_metadata()),
                               context.time_remaining()))
            queue = self.failures.get(method, [])
            code = queue.pop(0) if queue else None
        if code is not None:
            context.abort(code, f"scripted {code.name}")

    def GetSession(self, request, context):
        self._enter("GetSession", context)
        return pb.Session(session_id=request.session_id, position=7)

    def GetModel(self, request, context):
        self._enter("GetModel", context)
        return pb.ModelInfo(name="fake")

    def Append(self, request, context):
        self._enter("Append", context)
        return pb.AppendResponse(tokens_consumed=len(request.text), position=len(request.text))

    def CreateSession(self, request, context):
        self._enter("CreateSession", context)
        return pb.Session(session_id=request.session_id)

    def CloseSession(self, request, context):
        self._enter("CloseSession", context)
        return pb.CloseSessionResponse()


@pytest.fixture
def scripted():
    servicer = ScriptedServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_TitansServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)
