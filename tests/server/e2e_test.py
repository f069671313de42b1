#!/usr/bin/python3
"""End-to-end test of titans-server with an independent client: Python's grpcio (Debian
python3-grpcio), with stubs generated at test time by protoc + grpc_python_plugin.

It starts the real server binary on a free loopback port, checks health (grpc.health.v1) and
reflection, drives sessions through every RPC including bad input, drives titans-cli, then stops
the server with SIGTERM and checks that a restarted server still has the sessions.

Usage: e2e_test.py SERVER_BINARY CLI_BINARY MODEL_DIR PROTO_DIR
Prints "N passed, M failed" and exits non-zero on any failure.
"""
import json
import os
import signal
import urllib.request
import socket
import subprocess
import sys
import tempfile
import time

SERVER, CLI, MODEL_DIR, PROTO_DIR = sys.argv[1:5]
GRPC_PROTO = "/usr/share/grpc-proto"
work = tempfile.mkdtemp(prefix="titans_e2e_")
stubs = os.path.join(work, "stubs")
os.makedirs(stubs)
# The standard protos are copied under "grpc_std/" so their Python modules do not collide with
# the installed grpc package (the proto package, and so the service names, stay grpc.*).
std = os.path.join(work, "std")
for rel in ("health/v1/health.proto", "reflection/v1alpha/reflection.proto"):
    os.makedirs(os.path.join(std, "grpc_std", os.path.dirname(rel)), exist_ok=True)
    with open(os.path.join(GRPC_PROTO, "grpc", rel)) as src, \
            open(os.path.join(std, "grpc_std", rel), "w") as dst:
        dst.write(src.read())
subprocess.run(
    ["protoc", f"-I{PROTO_DIR}", f"-I{std}", f"--python_out={stubs}",
     f"--grpc_out={stubs}", "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
     os.path.join(PROTO_DIR, "titans/v1/titans.proto"),
     os.path.join(std, "grpc_std/health/v1/health.proto"),
     os.path.join(std, "grpc_std/reflection/v1alpha/reflection.proto")],
    check=True)
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from grpc_std.health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_std.reflection.v1alpha import reflection_pb2, reflection_pb2_grpc  # noqa: E402
from titans.v1 import titans_pb2 as pb, titans_pb2_grpc as rpc  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pyutil"))
from titans_testutil import self_signed as self_signed_in  # noqa: E402

results = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    if condition:
        results["passed"] += 1
        print(f"PASS {name}")
    else:
        results["failed"] += 1
        print(f"FAIL {name} {detail}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port, state_dir, extra=(), credentials=None, metrics_port=-1):
    proc = subprocess.Popen(
        [SERVER, f"--port={port}", "--host=127.0.0.1", f"--model_dir={MODEL_DIR}",
         f"--state_dir={state_dir}", "--shutdown_grace_seconds=5",
         f"--metrics_port={metrics_port}", "--metrics_host=127.0.0.1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if credentials is None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    else:
        channel = grpc.secure_channel(f"localhost:{port}", credentials)
    grpc.channel_ready_future(channel).result(timeout=60)
    return proc, channel


def code_of(fn):
    try:
        fn()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


port, state_dir, metrics_port = free_port(), os.path.join(work, "state"), free_port()
proc, channel = start_server(port, state_dir, ["--log_format=json", "--log_level=debug"],
                             metrics_port=metrics_port)
stub = rpc.TitansStub(channel)
try:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    check("health SERVING", health.status == health_pb2.HealthCheckResponse.SERVING)

    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]))
    services = [s.name for r in responses for s in r.list_services_response.service]
    check("reflection lists titans.v1.Titans", "titans.v1.Titans" in services, services)

    model = stub.GetModel(pb.GetModelRequest())
    with open(os.path.join(MODEL_DIR, "config.json")) as f:
        config = json.load(f)
    check("model metadata", model.variant == config["variant"] and model.name == config["name"]
          and model.initialization == config["initialization"] and model.parameters > 0, model)

    s = stub.CreateSession(pb.CreateSessionRequest(labels={"suite": "e2e"}))
    sid = s.session_id
    check("server-assigned id is long", len(sid) >= 32, sid)
    text = "In the beginning God created the heaven and the earth. " * 20
    r = stub.Append(pb.AppendRequest(session_id=sid, text=text.encode()))
    check("append consumed", r.tokens_consumed == len(text) and r.position == len(text), r)

    def chunks():
        for _ in range(10):
            yield pb.AppendRequest(session_id=sid, text=b"streamed context " * 100)
    r = stub.AppendStream(chunks())
    check("append stream", r.tokens_consumed == 17 * 100 * 10, r)

    msgs = list(stub.Generate(pb.GenerateRequest(
        session_id=sid, max_tokens=16, sampling=pb.SamplingParams(temperature=0.7, seed=5),
        stop_at_eos=False)))
    tokens = [t for m in msgs for t in m.token_ids]
    check("generate streams 16 tokens", len(tokens) == 16, len(tokens))
    check("finish reason length", msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH)
    position = stub.GetSession(pb.GetSessionRequest(session_id=sid)).position
    check("generated tokens join the session", position == len(text) + 17000 + 16, position)

    snap = stub.ExportSession(pb.ExportSessionRequest(session_id=sid))
    a = stub.ImportSession(pb.ImportSessionRequest(snapshot=snap.snapshot, session_id="copy-a"))
    b = stub.ForkSession(pb.ForkSessionRequest(session_id=sid, new_session_id="fork-b"))
    def greedy(session):
        return [t for m in stub.Generate(pb.GenerateRequest(
            session_id=session, max_tokens=12, sampling=pb.SamplingParams(temperature=0),
            stop_at_eos=False)) for t in m.token_ids]
    check("import and fork continue identically", greedy("copy-a") == greedy("fork-b"))

    check("unknown session NOT_FOUND", code_of(lambda: stub.Append(
        pb.AppendRequest(session_id="missing", text=b"x"))) == grpc.StatusCode.NOT_FOUND)
    check("invalid UTF-8 INVALID_ARGUMENT", code_of(lambda: stub.Append(
        pb.AppendRequest(session_id=sid, text=b"\xff\xfe"))) == grpc.StatusCode.INVALID_ARGUMENT)
    check("token out of vocabulary INVALID_ARGUMENT", code_of(lambda: stub.Append(
        pb.AppendRequest(session_id=sid, tokens=pb.TokenIds(ids=[70000])))) ==
        grpc.StatusCode.INVALID_ARGUMENT)
    check("bad temperature INVALID_ARGUMENT", code_of(lambda: list(stub.Generate(
        pb.GenerateRequest(session_id=sid, sampling=pb.SamplingParams(temperature=-2))))) ==
        grpc.StatusCode.INVALID_ARGUMENT)
    check("duplicate id ALREADY_EXISTS", code_of(lambda: stub.CreateSession(
        pb.CreateSessionRequest(session_id="copy-a"))) == grpc.StatusCode.ALREADY_EXISTS)
    check("corrupt snapshot DATA_LOSS", code_of(lambda: stub.ImportSession(
        pb.ImportSessionRequest(snapshot=snap.snapshot[:-7]))) == grpc.StatusCode.DATA_LOSS)
    after = stub.GetSession(pb.GetSessionRequest(session_id=sid)).position
    check("bad input left the session intact", after == position, (after, position))

    score = stub.Score(pb.ScoreRequest(session_id=sid, tokens=pb.TokenIds(ids=[72, 105])))
    check("score", len(score.logprobs) == 2 and all(lp < 0 for lp in score.logprobs), score)

    # titans-cli against the same server.
    ctx_file = os.path.join(work, "context.txt")
    with open(ctx_file, "w") as f:
        f.write("a long document for the command-line client. " * 2000)
    cli = [CLI, f"--server=127.0.0.1:{port}"]
    created = subprocess.run(cli + ["create", "--id=cli-session"], capture_output=True, text=True)
    check("cli create", created.returncode == 0 and created.stdout.strip() == "cli-session",
          created.stderr)
    appended = subprocess.run(cli + ["append", "cli-session", ctx_file], capture_output=True,
                              text=True)
    check("cli append from file", appended.returncode == 0 and "position 90000" in appended.stdout,
          appended.stdout + appended.stderr)
    generated = subprocess.run(cli + ["generate", "cli-session", "--max_tokens=5", "--seed=1"],
                               capture_output=True, text=True)
    check("cli generate", generated.returncode == 0 and "5 tokens" in generated.stderr,
          generated.stderr)
    missing = subprocess.run(cli + ["get", "nope"], capture_output=True, text=True)
    check("cli reports NOT_FOUND", missing.returncode == 1 and "not found" in missing.stderr)

    # Metrics: the exposition is valid for promtool and carries what happened above.
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    exposition = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    promtool = subprocess.run(["promtool", "check", "metrics"], input=exposition,
                              capture_output=True, text=True)
    check("promtool check metrics", promtool.returncode == 0, promtool.stdout + promtool.stderr)
    for name in ["titans_rpc_requests_total", "titans_rpc_duration_seconds_bucket",
                 "titans_sessions", "titans_sessions_opened_total", "titans_session_state_bytes",
                 "titans_queue_tokens", "titans_queue_time_seconds_bucket",
                 "titans_step_sessions_bucket", "titans_step_tokens_bucket",
                 "titans_memory_kernel_seconds_bucket", "titans_tokens_total",
                 "titans_time_to_first_token_seconds_bucket",
                 "titans_inter_token_latency_seconds_bucket", "titans_durability_lag_tokens",
                 "titans_model_info", "titans_process_cpu_seconds_total",
                 "titans_process_resident_memory_bytes"]:
        check(f"metric {name}", name in exposition)
    appended = [line for line in exposition.splitlines()
                if line.startswith('titans_tokens_total{kind="appended"}')]
    check("appended tokens counted",
          appended and float(appended[0].split()[-1]) >= len(text) + 17000, appended)
    check("not-found RPCs counted", 'code="NOT_FOUND"' in exposition)
    # Dashboards and alert rules query only metrics the server exports; the rules are valid.
    import re
    root = os.path.dirname(os.path.abspath(PROTO_DIR))
    rules = os.path.join(root, "deploy/prometheus/titans-alerts.yml")
    checked = subprocess.run(["promtool", "check", "rules", rules], capture_output=True, text=True)
    check("promtool check rules", checked.returncode == 0, checked.stdout + checked.stderr)
    exported = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines()
                if line and not line.startswith("#")}
    for path in (rules, os.path.join(root, "deploy/grafana/titans-dashboard.json")):
        names = set(re.findall(r"titans_[a-z_]+", open(path).read()))
        missing = sorted(n for n in names if n not in exported)
        check(f"{os.path.basename(path)} queries exported metrics", not missing, missing)
    health = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=10)
    check("/healthz 200", health.status == 200)

    # A real Prometheus on loopback scrapes the server; the value comes back through its API.
    prom_port = free_port()
    prom_dir = os.path.join(work, "prometheus")
    os.makedirs(prom_dir)
    with open(os.path.join(prom_dir, "prometheus.yml"), "w") as f:
        f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: titans\n"
                f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n")
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={prom_dir}/prometheus.yml",
         f"--storage.tsdb.path={prom_dir}/data", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    value = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline and value is None:
            time.sleep(1)
            try:
                q = urllib.request.urlopen(
                    f"http://127.0.0.1:{prom_port}/api/v1/query?query=titans_sessions_opened_total",
                    timeout=5).read()
                result = json.loads(q)["data"]["result"]
                if result:
                    value = float(result[0]["value"][1])
            except Exception:
                pass
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
    check("Prometheus scraped titans_sessions_opened_total", value is not None and value >= 3,
          value)

    # Graceful shutdown: SIGTERM persists sessions; a new server serves them.
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    check("SIGTERM exits cleanly", proc.returncode == 0, out)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    rpc_lines = [l for l in lines if l.get("event") == "rpc"]
    check("JSON log lines parse", len(lines) >= len(out.splitlines()) - 2 and rpc_lines,
          out[-2000:])
    appends = [l for l in rpc_lines if l.get("method") == "Append" and l.get("session_id") == sid]
    check("rpc log carries request and session ids",
          appends and appends[0]["request_id"].startswith("r-"), appends[:1])
    check("no log line per token", len(rpc_lines) < 100, len(rpc_lines))
    listening = [l for l in lines if l.get("event") == "listening"]
    expected_arenas = (os.environ["MALLOC_ARENA_MAX"] + " (MALLOC_ARENA_MAX)"
                       if "MALLOC_ARENA_MAX" in os.environ else "2")
    check("startup log shows the malloc arena limit",
          listening and listening[0].get("malloc_arenas") == expected_arenas, listening[:1])
    bad = subprocess.run([SERVER, "--malloc_arena_max=-1", "--port=0"], capture_output=True,
                         text=True, timeout=60)
    check("negative --malloc_arena_max is refused", bad.returncode != 0
          and "--malloc_arena_max must be >= 0" in bad.stderr, bad.stderr[-500:])
    port = free_port()
    proc, channel = start_server(port, state_dir)
    stub = rpc.TitansStub(channel)
    again = stub.GetSession(pb.GetSessionRequest(session_id=sid))
    check("session survives restart", again.position == position, again)
    check("restored session generates", len(greedy(sid)) == 12)

    # TLS with client certificates (mTLS): a client presenting the trusted certificate gets in,
    # one without a certificate does not.
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    server_key, server_cert, server_key_file, server_cert_file = self_signed_in(work, "server")
    client_key, client_cert, _, client_cert_file = self_signed_in(work, "client")
    port = free_port()
    good = grpc.ssl_channel_credentials(root_certificates=server_cert, private_key=client_key,
                                        certificate_chain=client_cert)
    # The TLS settings come from a config file (--flagfile), as an operator would keep them.
    flagfile = os.path.join(work, "tls.flags")
    with open(flagfile, "w") as f:
        f.write(f"--tls_cert={server_cert_file}\n--tls_key={server_key_file}\n"
                f"--tls_client_ca={client_cert_file}\n")
    proc, channel = start_server(port, os.path.join(work, "tls-state"), [f"--flagfile={flagfile}"],
                                 good)
    tls_stub = rpc.TitansStub(channel)
    check("mTLS call succeeds", tls_stub.GetModel(pb.GetModelRequest()).parameters > 0)
    anonymous = grpc.secure_channel(f"localhost:{port}",
                                    grpc.ssl_channel_credentials(root_certificates=server_cert))
    check("mTLS without client certificate is refused", code_of(
        lambda: rpc.TitansStub(anonymous).GetModel(pb.GetModelRequest(), timeout=10)) ==
        grpc.StatusCode.UNAVAILABLE)
    plain = grpc.insecure_channel(f"127.0.0.1:{port}")
    check("plaintext client is refused", code_of(
        lambda: rpc.TitansStub(plain).GetModel(pb.GetModelRequest(), timeout=10)) ==
        grpc.StatusCode.UNAVAILABLE)
finally:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()

print(f"{results['passed']} passed, {results['failed']} failed")
sys.exit(1 if results["failed"] else 0)
