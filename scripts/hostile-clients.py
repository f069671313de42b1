#!/usr/bin/python3
"""Measures how titans-server holds up against the hostile clients of issue 17, end to end:

  1. /healthz latency while 12 silent connections and one client sending a byte per second are
     open on the metrics port;
  2. resident memory while two clients each stream 96 MiB into AppendStream (refused early by the
     per-request token limit and the in-flight byte budget);
  3. the same session id used by two principals.

Usage: scripts/hostile-clients.py [SERVER_BINARY] [MODEL_DIR]   (defaults: build/, models/default)
Prints one line per measurement.
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "build/server/titans-server")
MODEL = sys.argv[2] if len(sys.argv) > 2 else os.path.join(REPO, "models/default")

stubs = tempfile.mkdtemp()
std = "/usr/include"
subprocess.run(["protoc", f"-I{REPO}/proto", f"-I{std}", f"--python_out={stubs}",
                f"--grpc_out={stubs}", "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                "titans/v1/titans.proto"], check=True)
sys.path.insert(0, stubs)
import grpc  # noqa: E402
from titans.v1 import titans_pb2 as pb, titans_pb2_grpc as rpc  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


port, metrics_port = free_port(), free_port()
env = dict(os.environ, TITANS_AUTH_TOKENS="alice-token-1=alice,bob-token-22=bob")
proc = subprocess.Popen([SERVER, f"--port={port}", "--host=127.0.0.1",
                         f"--metrics_port={metrics_port}", "--metrics_host=127.0.0.1",
                         f"--model_dir={MODEL}", "--log_level=warning"],
                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                    options=[("grpc.max_send_message_length", 64 << 20)])
    grpc.channel_ready_future(channel).result(timeout=60)
    stub = rpc.TitansStub(channel)
    alice = (("authorization", "Bearer alice-token-1"),)
    bob = (("authorization", "Bearer bob-token-22"),)

    # 1. Slow and silent clients on the metrics port.
    def healthz_ms():
        start = time.monotonic()
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=30).read()
        return (time.monotonic() - start) * 1000

    baseline = min(healthz_ms() for _ in range(5))
    silent = [socket.create_connection(("127.0.0.1", metrics_port)) for _ in range(12)]
    slow = socket.create_connection(("127.0.0.1", metrics_port))
    stop = threading.Event()

    def drip():
        for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n":
            if stop.is_set():
                return
            try:
                slow.send(bytes([byte]))
            except OSError:
                return
            time.sleep(1)

    threading.Thread(target=drip, daemon=True).start()
    time.sleep(0.5)
    loaded = [healthz_ms() for _ in range(10)]
    stop.set()
    for s in silent + [slow]:
        s.close()
    print(f"healthz: {baseline:.1f} ms alone; with 12 silent + 1 byte-per-second clients "
          f"median {sorted(loaded)[5]:.1f} ms, max {max(loaded):.1f} ms")

    # 2. Two concurrent 96 MiB AppendStreams.
    def rss_mib():
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    stub.CreateSession(pb.CreateSessionRequest(session_id="big"), metadata=alice)
    before = rss_mib()
    peak = [before]
    results = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.01)

    def stream():
        chunk = pb.AppendRequest(session_id="big", text=b"x" * (1 << 20))
        try:
            stub.AppendStream(iter([chunk] * 96), metadata=alice, timeout=120)
            results.append("OK")
        except grpc.RpcError as e:
            results.append(e.code().name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    streams = [threading.Thread(target=stream) for _ in range(2)]
    for t in streams:
        t.start()
    for t in streams:
        t.join()
    done.set()
    watcher.join()
    print(f"two 96 MiB AppendStreams: {results}; resident memory {before:.0f} MiB before, "
          f"peak {peak[0]:.0f} MiB")

    # 3. One id, two principals.
    stub.CreateSession(pb.CreateSessionRequest(session_id="shared-name"), metadata=alice)
    try:
        stub.CreateSession(pb.CreateSessionRequest(session_id="shared-name"), metadata=bob)
        outcome = "created (a separate session)"
    except grpc.RpcError as e:
        outcome = e.code().name
    stub.Append(pb.AppendRequest(session_id="shared-name", text=b"alice"), metadata=alice)
    a = stub.GetSession(pb.GetSessionRequest(session_id="shared-name"), metadata=alice).position
    b = stub.GetSession(pb.GetSessionRequest(session_id="shared-name"), metadata=bob).position
    print(f"same id for a second principal: {outcome}; positions alice {a}, bob {b}")
finally:
    proc.terminate()
    proc.wait(timeout=60)
