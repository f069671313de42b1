#!/usr/bin/python3
"""Scale-out by session: three titans-server replicas sharing sessions through Redis, behind
HAProxy (deploy/haproxy/titans-haproxy.cfg) hashing the x-titans-session header. Clients stream
appends, generations and rewinds into their sessions through the router; then the replica holding
the most sessions is killed with SIGKILL mid-stream. Checks: before the kill no session ever moved
(the hashing keeps each on one replica: titans_sessions_acquired_total stays 0); after it, the
dead replica's sessions continue on the others (acquired from Redis), nothing acknowledged is lost,
and every session's state matches an uninterrupted reference.

Usage: multi_replica_test.py SERVER_BINARY MODEL_DIR REPO_DIR
Prints "N passed, M failed"; exits non-zero on any failure.
"""
import atexit
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SERVER, MODEL_DIR, REPO = sys.argv[1:4]
work = tempfile.mkdtemp(prefix="titans_multi_")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pyutil"))
from titans_testutil import Checks, free_port, stop as stop_processes, titans_stubs  # noqa: E402
grpc, pb, rpc = titans_stubs()

checks = Checks()
check = checks.check



procs = []


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.kill()


atexit.register(stop_all)  # also when an exception ends the test early
redis_port = free_port()
procs.append(subprocess.Popen(
    ["/usr/bin/redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", work,
     "--save", "", "--appendonly", "yes", "--appendfsync", "always",
     "--logfile", os.path.join(work, "redis.log")]))


def start_replica(i, grpc_port, metrics_port):
    log = open(os.path.join(work, f"replica{i}.log"), "w")
    p = subprocess.Popen([SERVER, f"--port={grpc_port}", "--host=127.0.0.1",
                          f"--metrics_port={metrics_port}", "--metrics_host=127.0.0.1",
                          f"--model_dir={MODEL_DIR}", f"--state_dir={work}/state{i}",
                          f"--session_store=redis://127.0.0.1:{redis_port}/titans",
                          "--durability=sync", "--rewind_interval_tokens=256"],
                         stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    return p


replicas = []
for i in range(3):
    g, m = free_port(), free_port()
    replicas.append({"name": f"replica{i + 1}", "grpc": g, "metrics": m,
                     "proc": start_replica(i + 1, g, m)})
    procs.append(replicas[-1]["proc"])

# The router: the repository's HAProxy configuration with this test's ports.
router_port = free_port()
with open(os.path.join(REPO, "deploy/haproxy/titans-haproxy.cfg")) as f:
    cfg = f.read()
cfg = cfg.replace("bind 127.0.0.1:50050", f"bind 127.0.0.1:{router_port}")
for i, r in enumerate(replicas):
    cfg = cfg.replace(f"127.0.0.1:5005{i + 1} ", f"127.0.0.1:{r['grpc']} ")
cfg = cfg.replace("check inter 1s fall 2", "check inter 200ms fall 1")  # notice the kill quickly
cfg_path = os.path.join(work, "haproxy.cfg")
with open(cfg_path, "w") as f:
    f.write(cfg)
procs.append(subprocess.Popen(["haproxy", "-f", cfg_path], stdout=open(os.path.join(work, "haproxy.log"), "w"),
                              stderr=subprocess.STDOUT))
router_channel = grpc.insecure_channel(f"127.0.0.1:{router_port}")
router = rpc.TitansStub(router_channel)
# Wait until HAProxy listens and forwards. A loaded CI machine can take seconds to start it, and a
# refused connection puts the channel into reconnect backoff, so wait on the channel itself (it keeps
# retrying) rather than counting fast failures; then one call with wait_for_ready proves the route.
deadline = time.time() + 60
while True:
    if procs[-1].poll() is not None:
        sys.exit("haproxy exited: " + open(os.path.join(work, "haproxy.log")).read())
    try:
        grpc.channel_ready_future(router_channel).result(timeout=1)
        router.ListModels(pb.ListModelsRequest(), timeout=10, wait_for_ready=True)
        break
    except (grpc.FutureTimeoutError, grpc.RpcError) as e:
        if time.time() > deadline:
            sys.exit(f"the router on port {router_port} never answered: {e}")


def metric(replica, name):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{replica['metrics']}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
        if m:
            total += float(m.group(2))
    return total


def md(sid):
    return (("x-titans-session", sid),)


SESSIONS = 6
ids = [f"user{i}" for i in range(SESSIONS)]
acked = {sid: [] for sid in ids}  # ("text", bytes) | ("ids", [...]) | ("rewind", position)
for sid in ids:
    router.CreateSession(pb.CreateSessionRequest(session_id=sid), metadata=md(sid), timeout=30)
    # Some context first: a generation on an empty session starts with the beginning-of-sequence
    # token, which the reference below (built from appends) would not have.
    opening = f"Session {sid} begins. ".encode()
    router.Append(pb.AppendRequest(session_id=sid, text=opening), metadata=md(sid), timeout=30)
    acked[sid].append(("text", opening))


def count_of(ops):
    """The session's position after ops: a rewind, or a "lost" entry (the position the session
    reported after an operation cut by the kill), sets it; text and token ids add to it."""
    n = 0
    for kind, value in ops:
        n = value if kind in ("rewind", "lost") else n + len(value)
    return n


errors = []
stop = threading.Event()
killed = threading.Event()


def client(sid, seed):
    rnd = random.Random(seed)
    while not stop.is_set():
        have = count_of(acked[sid])
        roll = rnd.random()
        try:
            if have > 0 and roll < 0.1:
                op = ("rewind", have - rnd.randint(0, min(have, 150)))
                router.RewindSession(pb.RewindSessionRequest(session_id=sid, position=op[1]),
                                     metadata=md(sid), timeout=30)
            elif roll < 0.25:
                # A greedy generation streamed through the router; its tokens join the session.
                tokens = []
                for m in router.Generate(pb.GenerateRequest(
                        session_id=sid, max_tokens=rnd.randint(1, 6), stop_at_eos=False,
                        sampling=pb.SamplingParams(temperature=0)), metadata=md(sid), timeout=30):
                    tokens.extend(m.token_ids)
                op = ("ids", tokens)
            else:
                text = bytes(rnd.choice(b"abcdefghij klmnopqrstuvwxyz.") for _ in range(rnd.randint(10, 200)))
                op = ("text", text)
                router.Append(pb.AppendRequest(session_id=sid, text=text), metadata=md(sid), timeout=30)
            acked[sid].append(op)
        except grpc.RpcError as e:
            if not killed.is_set():
                errors.append(f"{sid}: {e.code()} {e.details()}")
                return
            # The replica died under this call (or the router had not noticed yet): whether it
            # made it durable is unknown. Ask the session (through the router: another replica
            # now) before going on. A generation's tokens are unknown: resynchronise below.
            time.sleep(0.3)
            try:
                position = router.GetSession(pb.GetSessionRequest(session_id=sid),
                                             metadata=md(sid), timeout=30).position
            except grpc.RpcError as e2:
                errors.append(f"{sid}: after the kill: {e2.code()} {e2.details()}")
                return
            if position != have:
                acked[sid].append(("lost", position))


threads = [threading.Thread(target=client, args=(sid, i)) for i, sid in enumerate(ids)]
for t in threads:
    t.start()
time.sleep(4)
moved_before = sum(metric(r, "titans_sessions_acquired_total") or 0 for r in replicas)
held = {r["name"]: metric(r, "titans_sessions") or 0 for r in replicas}
victim = max(replicas, key=lambda r: held[r["name"]])
at_kill = {sid: len(acked[sid]) for sid in ids}
killed.set()
victim["proc"].send_signal(signal.SIGKILL)
victim["proc"].wait()
time.sleep(4)
stop.set()
for t in threads:
    t.join()

check("no RPC errors before the kill", not errors, errors[:3])
check("the router kept every session on one replica before the kill (no migrations)",
      moved_before == 0, moved_before)
check(f"the killed replica ({victim['name']}) held sessions", held[victim["name"]] > 0, held)
survivors = [r for r in replicas if r is not victim]
moved_after = sum(metric(r, "titans_sessions_acquired_total") or 0 for r in survivors)
check("its sessions were taken over by the survivors", moved_after >= 1, moved_after)

ref_port = free_port()
ref_proc = subprocess.Popen([SERVER, f"--port={ref_port}", "--host=127.0.0.1", "--metrics_port=-1",
                             f"--model_dir={MODEL_DIR}", "--rewind_interval_tokens=256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
procs.append(ref_proc)
ref_channel = grpc.insecure_channel(f"127.0.0.1:{ref_port}")
grpc.channel_ready_future(ref_channel).result(timeout=60)
ref = rpc.TitansStub(ref_channel)
probe = pb.TokenIds(ids=[ord(c) for c in "who remembers?"])
for sid in ids:
    ops = acked[sid]
    position = router.GetSession(pb.GetSessionRequest(session_id=sid), metadata=md(sid)).position
    total = sum(len(v) for k, v in ops if k in ("text", "ids"))
    check(f"{sid}: the session continued after the kill ({total} tokens acknowledged)",
          position > 0 and total > 0, position)
    if any(k == "lost" for k, _ in ops):
        # An operation cut by the kill was applied without its reply: the client cannot rebuild
        # the exact sequence; the session is checked for being served, not against a reference.
        continue
    check(f"{sid}: every acknowledged token is present (position {position})",
          position == count_of(ops), (position, count_of(ops)))
    ref.CreateSession(pb.CreateSessionRequest(session_id=sid))
    for kind, value in ops:
        if kind == "text":
            ref.Append(pb.AppendRequest(session_id=sid, text=value))
        elif kind == "ids":
            if value:
                ref.Append(pb.AppendRequest(session_id=sid, tokens=pb.TokenIds(ids=value)))
        else:
            ref.RewindSession(pb.RewindSessionRequest(session_id=sid, position=value))
    a = router.Score(pb.ScoreRequest(session_id=sid, tokens=probe), metadata=md(sid)).logprobs
    b = ref.Score(pb.ScoreRequest(session_id=sid, tokens=probe)).logprobs
    worst = max(abs(x - y) for x, y in zip(a, b))
    check(f"{sid}: state matches the uninterrupted reference (max |dlogprob| {worst:.2e})",
          worst < 1e-3, worst)
    if worst >= 1e-3:
        # Localise: fork the served session at op boundaries still on its timeline and compare
        # with a reference built from that many ops.
        def differs(k):
            target = count_of(ops[:k])
            fork = f"{sid}-at{k}"
            router.ForkSession(pb.ForkSessionRequest(session_id=sid, new_session_id=fork,
                                                     position=target), metadata=md(fork))
            rid = f"{sid}-ref{k}"
            ref.CreateSession(pb.CreateSessionRequest(session_id=rid))
            for kind, value in ops[:k]:
                if kind == "text":
                    ref.Append(pb.AppendRequest(session_id=rid, text=value))
                elif kind == "ids" and value:
                    ref.Append(pb.AppendRequest(session_id=rid, tokens=pb.TokenIds(ids=value)))
                elif kind == "rewind":
                    ref.RewindSession(pb.RewindSessionRequest(session_id=rid, position=value))
            x = router.Score(pb.ScoreRequest(session_id=fork, tokens=probe), metadata=md(fork)).logprobs
            y = ref.Score(pb.ScoreRequest(session_id=rid, tokens=probe)).logprobs
            return max(abs(p - q) for p, q in zip(x, y)) >= 1e-3
        def on_final_timeline(k):  # no later rewind went back before this prefix's end
            return all(v >= count_of(ops[:k]) for kind, v in ops[k:] if kind == "rewind")
        try:
            first = next(k for k in range(1, len(ops) + 1) if on_final_timeline(k) and differs(k))
            print(f"  {sid}: first divergence after op {first - 1} of {len(ops)} "
                  f"(kill after op {at_kill[sid] - 1}):",
                  [(i, k, len(v) if k != "rewind" else v)
                   for i, (k, v) in enumerate(ops[max(0, first - 4):first], max(0, first - 4))])
        except (grpc.RpcError, StopIteration) as e:
            print(f"  {sid}: could not localise: {e}")

# The killed replica comes back (same ports). Each session must be counted by exactly one
# replica: the one holding it. Requests routed back to the restarted replica move sessions to
# it; the replicas that lose them notice within --ownership_check_seconds and stop counting them.
index = int(victim["name"][len("replica"):])
victim["proc"] = start_replica(index, victim["grpc"], victim["metrics"])
procs.append(victim["proc"])
time.sleep(1)  # the router's health check sees it up
for sid in ids:
    router.Score(pb.ScoreRequest(session_id=sid, tokens=probe), metadata=md(sid), timeout=30)
open_sessions = len(router.ListSessions(pb.ListSessionsRequest(page_size=1000), timeout=30).sessions)
counted = None
for _ in range(60):
    counted = {r["name"]: metric(r, "titans_sessions") for r in replicas}
    if sum(v or 0 for v in counted.values()) == open_sessions:
        break
    time.sleep(0.5)
check(f"after the restart, the replicas' titans_sessions add up to the {open_sessions} open "
      "sessions", sum(v or 0 for v in counted.values()) == open_sessions, counted)

stop_processes(procs)
checks.finish()
