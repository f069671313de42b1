#!/usr/bin/python3
"""Two titans-server processes sharing sessions through Redis (--session_store=redis://...,
--durability=sync): clients send each operation to either replica at random, so sessions move
between them all the time; then replica A is killed with SIGKILL and the clients go on with B.
Checks: no acknowledged operation is lost, each session's state matches an uninterrupted
reference, and a restarted A serves the sessions as B left them.

Usage: shared_sessions_test.py SERVER_BINARY MODEL_DIR
Prints "N passed, M failed"; exits non-zero on any failure.
"""
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

SERVER, MODEL_DIR = sys.argv[1:3]
work = tempfile.mkdtemp(prefix="titans_shared_")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "pyutil"))
from titans_testutil import Checks, free_port, titans_stubs  # noqa: E402
grpc, pb, rpc = titans_stubs()

checks = Checks()
check = checks.check



redis_port = free_port()
redis = subprocess.Popen(["/usr/bin/redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                          "--dir", work, "--save", "", "--appendonly", "yes",
                          "--appendfsync", "always", "--logfile", os.path.join(work, "redis.log")])
STORE = f"redis://127.0.0.1:{redis_port}/titans"


def start(port, store=STORE):
    args = [SERVER, f"--port={port}", "--host=127.0.0.1", f"--model_dir={MODEL_DIR}",
            "--metrics_port=-1", "--rewind_interval_tokens=256"]
    if store:
        args += [f"--session_store={store}", "--durability=sync"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    return proc, rpc.TitansStub(channel)


port_a, port_b = free_port(), free_port()
proc_a, stub_a = start(port_a)
proc_b, stub_b = start(port_b)
replicas = {"A": stub_a, "B": stub_b}
a_alive = threading.Event()
a_alive.set()

SESSIONS = int(os.environ.get("SHARED_TEST_SESSIONS", "3"))
acked = {f"s{i}": [] for i in range(SESSIONS)}     # ("text", bytes) | ("rewind", position)
in_flight = {sid: None for sid in acked}
errors = []
trace = {sid: [] for sid in acked}
for sid in acked:
    replicas[random.choice("AB")].CreateSession(pb.CreateSessionRequest(session_id=sid))
stop = threading.Event()
moved = {sid: 0 for sid in acked}  # replica changes so far, per session


def count_of(ops):
    n = 0
    for kind, value in ops:
        n = value if kind == "rewind" else n + len(value)
    return n


def client(sid, seed):
    rnd = random.Random(seed)
    moves = 0
    last = None
    while not stop.is_set():
        name = rnd.choice("AB") if a_alive.is_set() else "B"
        stub = replicas[name]
        have = count_of(acked[sid])
        if have > 0 and rnd.random() < 0.1:
            op = ("rewind", have - rnd.randint(0, min(have, 200)))
        else:
            op = ("text", bytes(rnd.choice(b"abcdefghij klmnopqrstuvwxyz.")
                                for _ in range(rnd.randint(10, 200))))
        in_flight[sid] = (name, op)
        try:
            if op[0] == "text":
                reply = stub.Append(pb.AppendRequest(session_id=sid, text=op[1]), timeout=30)
            else:
                reply = stub.RewindSession(
                    pb.RewindSessionRequest(session_id=sid, position=op[1]), timeout=30)
            acked[sid].append(op)
            # What each acknowledgement said, to localise a divergence if one shows up.
            trace[sid].append((name, op[0], len(op[1]) if op[0] == "text" else op[1],
                               reply.position, count_of(acked[sid])))
            in_flight[sid] = None
            moves += last is not None and last != name
            moved[sid] = moves
            last = name
        except grpc.RpcError as e:
            if name == "A" and not a_alive.is_set():
                # A died under this call: it may or may not have made it durable. Find out from
                # the store through B before going on (a forgotten rewind would make the client's
                # view of the session's tokens wrong from here on).
                time.sleep(0.3)  # let anything A had already sent reach Redis
                position = stub_b.GetSession(pb.GetSessionRequest(session_id=sid)).position
                if position != have and position == count_of(acked[sid] + [op]):
                    acked[sid].append(op)
                    trace[sid].append(("A", op[0] + " (applied as A died)", 0, position, position))
                in_flight[sid] = None
                continue
            if e.code() == grpc.StatusCode.UNAVAILABLE and "taken over" in (e.details() or ""):
                in_flight[sid] = None
                continue  # lost a race with the other replica: not applied, retry
            errors.append(f"{sid} on {name}: {e.code()} {e.details()}")
            return
    acked[sid].append(("moves", moves))


threads = [threading.Thread(target=client, args=(sid, i)) for i, sid in enumerate(acked)]
for t in threads:
    t.start()
time.sleep(float(os.environ.get("SHARED_TEST_SECONDS", "3")))
# On a loaded machine fewer operations fit in those seconds: go on until every session has
# moved between the replicas a few times (what the test is about), within a minute.
deadline = time.time() + 60
while min(moved.values()) < 3 and time.time() < deadline and not errors:
    time.sleep(0.2)
a_alive.clear()
proc_a.send_signal(signal.SIGKILL)
proc_a.wait()
time.sleep(2)
stop.set()
for t in threads:
    t.join()
check("no unexpected RPC errors", not errors, errors[:3])
moves = {sid: dict(ops).get("moves", 0) for sid, ops in acked.items()}
for sid in acked:
    acked[sid] = [op for op in acked[sid] if op[0] != "moves"]
check("sessions moved between the replicas", all(m >= 3 for m in moves.values()), moves)

ref_proc, ref = start(free_port(), store=None)
probe = pb.TokenIds(ids=[ord(c) for c in "shared memory"])
try:
    for sid, ops in acked.items():
        count = count_of(ops)
        position = stub_b.GetSession(pb.GetSessionRequest(session_id=sid)).position
        pending = in_flight[sid]
        replay = list(ops)
        if position != count and pending is not None:
            # Sent to A as it died: applied (and logged) or not at all.
            if position == count_of(ops + [pending[1]]):
                replay.append(pending[1])
        check(f"{sid}: every acknowledged operation is present (position {position})",
              position == count_of(replay), (position, count, pending))
        ref.CreateSession(pb.CreateSessionRequest(session_id=sid))
        for kind, value in replay:
            if kind == "text":
                ref.Append(pb.AppendRequest(session_id=sid, text=value))
            else:
                ref.RewindSession(pb.RewindSessionRequest(session_id=sid, position=value))
        a = stub_b.Score(pb.ScoreRequest(session_id=sid, tokens=probe)).logprobs
        b = ref.Score(pb.ScoreRequest(session_id=sid, tokens=probe)).logprobs
        worst = max(abs(x - y) for x, y in zip(a, b))
        check(f"{sid}: state on B matches the reference (max |dlogprob| {worst:.2e})",
              worst < 1e-3, worst)
        if worst >= 1e-3 or position != count_of(replay):
            print(f"  trace of {sid} (replica, op, length/target, server position, client count):")
            for entry in trace[sid]:
                print("   ", entry, "" if entry[3] == entry[4] else "<-- differs")
            print("  pending at the kill:", pending and (pending[0], pending[1][0]))
    # A comes back and serves the sessions as B left them.
    proc_a, stub_a = start(port_a)
    for sid in acked:
        pa = stub_a.GetSession(pb.GetSessionRequest(session_id=sid)).position
        pb_ = stub_b.GetSession(pb.GetSessionRequest(session_id=sid)).position
        sa = stub_a.Score(pb.ScoreRequest(session_id=sid, tokens=probe)).logprobs
        sb = ref.Score(pb.ScoreRequest(session_id=sid, tokens=probe)).logprobs
        worst = max(abs(x - y) for x, y in zip(sa, sb))
        check(f"{sid}: restarted A serves the session as B left it", pa == pb_ and worst < 1e-3,
              (pa, pb_, worst))
finally:
    for p in (proc_a, proc_b, ref_proc):
        p.send_signal(signal.SIGTERM)
        try:
            p.communicate(timeout=60)
        except Exception:  # noqa: BLE001
            p.kill()
    redis.kill()
checks.finish()
