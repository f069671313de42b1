#!/usr/bin/python3
"""The Helm chart, checked without Helm or a cluster: renders helm/titans with tools/chart-render
(Go text/template + Sprig, as Helm does; fails on any unknown value) for several value sets and
checks what Kubernetes and the deployment need: well-formed objects, selectors that match their
pods, the server flags each setting implies, gRPC probes, draining, GPU resources, the router's
session hashing (and `haproxy -c` on its configuration), and that every value is documented.

Usage: chart_test.py REPO_DIR. Prints "N passed, M failed"; exits non-zero on any failure.
"""
import os
import re
import subprocess
import sys
import tempfile

import yaml

REPO = os.path.abspath(sys.argv[1])
CHART = os.path.join(REPO, "helm/titans")
work = tempfile.mkdtemp(prefix="titans_chart_")
sys.path.insert(0, os.path.join(REPO, "tests", "pyutil"))
from titans_testutil import Checks  # noqa: E402

checks = Checks()
check = checks.check


render_bin = os.path.join(work, "chart-render")
env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
           GOCACHE=os.path.join(work, "gocache"), GOFLAGS="")
subprocess.run(["go", "build", "-o", render_bin, "./tools/chart-render"],
               check=True, env=env, cwd=REPO)


def render(*sets, release="titans", namespace="prod"):
    args = [render_bin, "-release", release, "-namespace", namespace]
    for s in sets:
        args += ["-set", s]
    out = subprocess.run(args + [CHART], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def server_container(docs):
    sts = [d for d in by_kind(docs, "StatefulSet")
           if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "server"]
    return sts[0], sts[0]["spec"]["template"]["spec"]["containers"][0]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# 1. Every value set renders, every object is well formed, every selector finds its pods.
scenarios = {
    "defaults": [],
    "no redis": ["sessionStore.redis.enabled=false"],
    "external redis": ["sessionStore.redis.external=redis.example:6380"],
    "gpu + autoscaling + monitoring + auth": [
        "gpu.enabled=true", "server.device=cuda", "autoscaling.enabled=true",
        "metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true",
        "server.authSecret=titans-tokens"],
    "no router": ["router.enabled=false"],
}
rendered = {}
for name, sets in scenarios.items():
    try:
        rendered[name] = render(*sets)
        check(f"[{name}] renders", True)
    except RuntimeError as e:
        check(f"[{name}] renders", False, e)
        continue
    docs = rendered[name]
    bad = [d.get("kind") for d in docs
           if not (d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"))]
    check(f"[{name}] every object has apiVersion, kind, metadata.name", not bad, bad)
    names = [d["metadata"]["name"] for d in docs]
    check(f"[{name}] names are valid DNS labels",
          all(DNS1123.match(n) and len(n) <= 63 for n in names), names)
    kinds_names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    check(f"[{name}] no duplicate objects", len(kinds_names) == len(set(kinds_names)), kinds_names)
    pod_labels = [d["spec"]["template"]["metadata"]["labels"]
                  for d in docs if d["kind"] in ("StatefulSet", "Deployment")]
    for d in docs:
        if d["kind"] in ("StatefulSet", "Deployment"):
            sel = d["spec"]["selector"]["matchLabels"]
            check(f"[{name}] {d['kind']} {d['metadata']['name']} selects its own pods",
                  selects(sel, d["spec"]["template"]["metadata"]["labels"]))
        if d["kind"] == "Service":
            check(f"[{name}] Service {d['metadata']['name']} selects some pods",
                  any(selects(d["spec"]["selector"], l) for l in pod_labels))
        if d["kind"] == "PodDisruptionBudget":
            check(f"[{name}] PodDisruptionBudget selects the server pods",
                  any(selects(d["spec"]["selector"]["matchLabels"], l) and
                      l.get("app.kubernetes.io/component") == "server" for l in pod_labels))

# 2. What each setting must do to the server.
docs = rendered["defaults"]
sts, c = server_container(docs)
args = c["args"]
check("defaults: shared sessions through the bundled Redis",
      "--session_store=redis://titans-redis:6379/titans" in args and
      any(d["kind"] == "StatefulSet" and d["metadata"]["name"] == "titans-redis" for d in docs), args)
check("defaults: sync durability, state on the volume, batch-invariant",
      "--durability=sync" in args and "--state_dir=/var/lib/titans" in args and
      "--batch_invariant=true" in args)
requested_cpu = str(c.get("resources", {}).get("requests", {}).get("cpu", ""))
check("defaults: the compute pool matches the pod's CPU request (not the node's cores)",
      requested_cpu.isdigit() and f"--compute_threads={requested_cpu}" in args,
      (requested_cpu, args))
check("defaults: bundled Redis fsyncs every write",
      "always" in by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
      if by_kind(docs, "StatefulSet")[0]["metadata"]["name"] == "titans-redis" else
      "always" in [d for d in docs if d["metadata"]["name"] == "titans-redis"
                   and d["kind"] == "StatefulSet"][0]["spec"]["template"]["spec"]["containers"][0]["args"])
headless = [d for d in by_kind(docs, "Service") if d["spec"].get("clusterIP") == "None"]
check("defaults: the StatefulSet's serviceName is a headless Service",
      [h["metadata"]["name"] for h in headless] == [sts["spec"]["serviceName"]])
check("defaults: gRPC readiness and liveness probes on the gRPC port",
      c["readinessProbe"]["grpc"]["port"] == 50051 and c["livenessProbe"]["grpc"]["port"] == 50051)
pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
shutdown = int([a for a in args if a.startswith("--shutdown_grace_seconds=")][0].split("=")[1])
check("defaults: preStop + server drain fit in terminationGracePeriodSeconds",
      pre_stop + shutdown < grace, (pre_stop, shutdown, grace))
check("defaults: runs as the image's non-root user",
      sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001)
check("defaults: one volume per replica at /var/lib/titans",
      sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state" and
      {"name": "state", "mountPath": "/var/lib/titans"} in c["volumeMounts"])
check("defaults: no GPU requested", "nvidia.com/gpu" not in c["resources"]["limits"])
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check("defaults: gRPC and metrics ports", ports == {"grpc": 50051, "metrics": 9464}, ports)

_, c = server_container(rendered["no redis"])
check("no redis: no session store flag, no Redis objects",
      not any(a.startswith("--session_store") for a in c["args"]) and
      not any("redis" in d["metadata"]["name"] for d in rendered["no redis"]))
_, c = server_container(rendered["external redis"])
check("external redis: the external address, no bundled Redis",
      "--session_store=redis://redis.example:6380/titans" in c["args"] and
      not any("redis" in d["metadata"]["name"] for d in rendered["external redis"]))
docs = rendered["gpu + autoscaling + monitoring + auth"]
sts, c = server_container(docs)
spec = sts["spec"]["template"]["spec"]
check("gpu: nvidia.com/gpu limit, GPU toleration, cuda device",
      c["resources"]["limits"].get("nvidia.com/gpu") == 1 and
      any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])) and
      "--device=cuda" in c["args"])
hpa = by_kind(docs, "HorizontalPodAutoscaler")
check("autoscaling: HPA on titans_queue_tokens targets the StatefulSet",
      len(hpa) == 1 and hpa[0]["spec"]["scaleTargetRef"]["name"] == sts["metadata"]["name"] and
      hpa[0]["spec"]["metrics"][0]["pods"]["metric"]["name"] == "titans_queue_tokens")
sm = by_kind(docs, "ServiceMonitor")
check("monitoring: ServiceMonitor scrapes the metrics port",
      len(sm) == 1 and sm[0]["spec"]["endpoints"][0]["port"] == "metrics")
rule = by_kind(docs, "PrometheusRule")
alerts = [r["alert"] for g in rule[0]["spec"]["groups"] for r in g["rules"]] if rule else []
check("monitoring: PrometheusRule carries the alert rules", len(alerts) >= 5, alerts)
check("auth: tokens file from the Secret",
      "--auth_tokens_file=/etc/titans/auth/tokens" in c["args"] and
      spec["volumes"][0]["secret"]["secretName"] == "titans-tokens")
check("no router: no HAProxy objects",
      not any("router" in d["metadata"]["name"] for d in rendered["no router"]))

# 3. The router: hashes the session header consistently onto the headless Service's replicas, and
# HAProxy accepts the configuration.
docs = rendered["defaults"]
cfg = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "titans-router"][0]
cfg = cfg["data"]["haproxy.cfg"]
check("router: balance on the x-titans-session header, consistent hashing",
      "balance hdr(x-titans-session)" in cfg and "hash-type consistent" in cfg)
check("router: discovers the replicas through the headless Service over h2",
      "titans-headless.prod.svc.cluster.local:50051 proto h2" in cfg)
path = os.path.join(work, "haproxy.cfg")
with open(path, "w") as f:
    f.write(cfg)
res = subprocess.run(["haproxy", "-c", "-f", path], capture_output=True, text=True)
check("router: haproxy -c accepts the rendered configuration", res.returncode == 0,
      res.stdout + res.stderr)

# 4. Every value is documented in helm/README.md.
def leaves(node, prefix=""):
    # A resources block (requests / limits) is one documented value.
    if isinstance(node, dict) and node and not prefix.endswith("resources"):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


with open(os.path.join(CHART, "values.yaml")) as f:
    values = yaml.safe_load(f)
with open(os.path.join(REPO, "helm/README.md")) as f:
    readme = f.read()
undocumented = [p for p in leaves(values) if f"`{p}`" not in readme]
check("every value is documented in helm/README.md", not undocumented, undocumented)

checks.finish()
