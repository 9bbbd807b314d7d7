#!/usr/bin/env python3
"""Lints and renders the Helm chart, and checks what the rendered manifests promise.

Usage: check_chart.py CHART OUT_DIR KEEPTYPING_BINARY

Renders the chart with default values, with deploy/tests/values-all-on.yaml (every optional
part switched on) and with deploy/tests/values-redis.yaml (three replicas on the Redis backend)
into OUT_DIR/<case>/, one file per template, for kubernetes-validate and yamllint to read
afterwards. Checks here:
- helm lint (strict) reports no warning or error for any of the value sets;
- values that violate values.schema.json fail to render; replicaCount 3 with the memory backend,
  and the redis backend without state.redisUrlSecret, fail with their messages;
- the Deployment keeps its contract: probes on /livez and /readyz, terminationGracePeriodSeconds
  above shutdown.grace (plus state.lease with Redis), non-root, read-only root filesystem, all
  capabilities dropped; with memory one replica, Recreate and no state variables; with Redis
  RollingUpdate (maxUnavailable 0, maxSurge 1), the state variables, the Redis URL from the
  named Secret, the replica id from the pod name, a PodDisruptionBudget and anti-affinity;
- the ConfigMap's TOML is accepted by `keeptyping check-config`, run with the environment and
  files the pod would get (and a broken copy is refused, so the check can fail; with Redis a
  missing URL is refused too, and the URL's password is never printed);
- the Service names a metrics port that the ServiceMonitor scrapes; the PrometheusRule carries
  exactly the groups of deploy/prometheus/keeptyping-rules.yml; the dashboard ConfigMap carries
  deploy/grafana/keeptyping.json and the sidecar label;
- every key in values.yaml is documented by a comment.
Exits non-zero on the first failed group of checks, printing what failed.
"""

import base64
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python
import yaml

FAILURES = []


def check(cond, what):
    print(("  ok    " if cond else "  FAIL  ") + what)
    if not cond:
        FAILURES.append(what)
    return cond


def render(chart, values, out_dir):
    files = helm_python.Chart.load(chart).render(values, name="kt", namespace="chat")
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            (out_dir / "NOTES.txt").write_text(text)
            continue
        if not text.strip():
            continue
        target = out_dir / Path(path).name
        target.write_text(text.lstrip("\n"))
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return files, docs


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind, name=None):
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def seconds(duration):
    m = re.fullmatch(r"([0-9]+)s", duration)
    if not m:
        raise AssertionError(f"shutdown.grace {duration!r} is not whole seconds")
    return int(m.group(1))


def lease_seconds(duration):
    """state.lease rounded up to whole seconds."""
    m = re.fullmatch(r"([0-9]+)(ms|s)", duration)
    if not m:
        raise AssertionError(f"state.lease {duration!r} is not <N>ms or <N>s")
    millis = int(m.group(1)) * (1 if m.group(2) == "ms" else 1000)
    return -(-millis // 1000)


def check_lint(chart, values, label):
    report = helm_python.lint(chart, values, strict=True, namespace="chat")
    bad = [m for m in report["messages"] if m["severity"] >= 2]
    check(not report["errors"] and not bad,
          f"helm lint --strict ({label}): {report['errors'] or bad or 'clean'}")


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_deployment(docs, values, label, backend="memory", replicas=1):
    dep = one(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    grace = seconds(values.get("config", {}).get("shutdown", {}).get("grace", "10s"))
    check(dep["spec"]["replicas"] == replicas, f"{label}: {replicas} replica(s)")
    check(c["livenessProbe"]["httpGet"]["path"] == "/livez", f"{label}: liveness probe on /livez")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{label}: readiness probe on /readyz")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(c["livenessProbe"]["httpGet"]["port"] in ports and c["readinessProbe"]["httpGet"]["port"] in ports,
          f"{label}: probes use a declared container port")
    check(spec["terminationGracePeriodSeconds"] > grace,
          f"{label}: terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} > shutdown.grace {grace}s")
    sc = c["securityContext"]
    check(spec["securityContext"].get("runAsNonRoot") is True and sc.get("runAsNonRoot") is True,
          f"{label}: runAsNonRoot")
    check(sc.get("readOnlyRootFilesystem") is True, f"{label}: readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, f"{label}: no privilege escalation")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: all capabilities dropped")
    check(bool(c.get("resources", {}).get("requests")) and bool(c["resources"].get("limits")),
          f"{label}: resources requested and limited")
    env = env_of(c)
    state_env = sorted(n for n in env if n.startswith("KEEPTYPING__STATE__") or n in ("KEEPTYPING_REDIS_URL", "KEEPTYPING_REPLICA_ID"))
    if backend == "memory":
        check(dep["spec"]["strategy"]["type"] == "Recreate", f"{label}: Recreate strategy (never two pods at once)")
        check(not state_env, f"{label}: no state variables with the memory backend ({state_env or 'none'})")
    else:
        check_redis_deployment(docs, dep, spec, env, values, label, grace)
    return dep


def check_redis_deployment(docs, dep, spec, env, values, label, grace):
    strategy = dep["spec"]["strategy"]
    check(strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
          f"{label}: RollingUpdate with maxUnavailable 0, maxSurge 1 ({strategy})")
    state = values["state"]
    want = {"KEEPTYPING__STATE__BACKEND": "redis", "KEEPTYPING__STATE__LEASE": state.get("lease", "2s"),
            "KEEPTYPING__STATE__CLUSTER": str(state.get("cluster", False)).lower()}
    got = {n: env.get(n, {}).get("value") for n in want}
    check(got == want, f"{label}: state variables {got}")
    ref = env.get("KEEPTYPING_REDIS_URL", {}).get("valueFrom", {}).get("secretKeyRef")
    secret = state["redisUrlSecret"]
    check(ref == {"name": secret["name"], "key": secret["key"]},
          f"{label}: KEEPTYPING_REDIS_URL from Secret {secret['name']}, key {secret['key']} ({ref})")
    field = env.get("KEEPTYPING_REPLICA_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    check(field == "metadata.name", f"{label}: KEEPTYPING_REPLICA_ID is the pod name ({field})")
    lease_s = lease_seconds(state.get("lease", "2s"))
    tgps = spec["terminationGracePeriodSeconds"]
    check(tgps > grace + lease_s,
          f"{label}: terminationGracePeriodSeconds {tgps} > shutdown.grace {grace}s + state.lease {lease_s}s (room to hand over)")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    check(len(pdbs) == 1 and (pdbs[0]["spec"].get("maxUnavailable") == 1 or pdbs[0]["spec"].get("minAvailable") == 1),
          f"{label}: a PodDisruptionBudget lets one pod go at a time")
    preferred = spec.get("affinity", {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
    selector = dep["spec"]["selector"]["matchLabels"]
    check(any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
              and t["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector for t in preferred),
          f"{label}: preferred pod anti-affinity on kubernetes.io/hostname")
    owned = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    check(secret["name"] not in owned, f"{label}: the chart does not create the Redis Secret {secret['name']}")
    check(not by_kind(docs, "StatefulSet"), f"{label}: the chart installs no Redis (no StatefulSet)")


REDIS_URL = "redis://:deploy-checks-redis-password@127.0.0.1:6379/0"


def pod_env(docs, data):
    """The environment the pod gets: the Secret's keys (envFrom) and the container's env, with
    the Redis URL from the user's own Secret and a pod name for the replica id."""
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = dict(data)
    for name, e in env_of(c).items():
        if name == "KEEPTYPING_CONFIG":
            continue  # the pod's path; check-config gets --config
        if "value" in e:
            env[name] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[name] = REDIS_URL
        elif "fieldRef" in e.get("valueFrom", {}):
            env[name] = "kt-keeptyping-5d8f7c9b6-x2x7q"
    return env


def check_config_accepted(docs, binary, label, backend="memory"):
    """Runs check-config on the rendered TOML with the env and files the pod would get."""
    cm = [d for d in by_kind(docs, "ConfigMap") if "keeptyping.toml" in d.get("data", {})]
    if not check(len(cm) == 1, f"{label}: one ConfigMap carries keeptyping.toml"):
        return
    toml_text = cm[0]["data"]["keeptyping.toml"]
    secrets = by_kind(docs, "Secret")
    data = {k: base64.b64decode(v).decode() for s in secrets for k, v in (s.get("data") or {}).items()}
    with tempfile.TemporaryDirectory() as tmp:
        mount = Path(tmp) / "secrets"
        mount.mkdir()
        for k, v in data.items():
            (mount / k).write_text(v)
        # The Deployment mounts the Secret at /var/run/secrets/keeptyping; point there.
        toml_local = toml_text.replace("/var/run/secrets/keeptyping/", f"{mount}/")
        cfg = Path(tmp) / "keeptyping.toml"
        cfg.write_text(toml_local)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **pod_env(docs, data)}
        r = subprocess.run([binary, "check-config", "--config", str(cfg)], env=env,
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, f"{label}: keeptyping check-config accepts the rendered TOML"
              + ("" if r.returncode == 0 else f" (exit {r.returncode}: {r.stderr.strip()})"))
        if r.returncode == 0:
            # The listen addresses and the secrets the pod gets must be what the service resolved.
            check('listen = "0.0.0.0:8080"' in r.stdout and 'listen = "0.0.0.0:9090"' in r.stdout,
                  f"{label}: check-config reports both listeners from the chart's ports")
            if backend == "redis":
                check(re.search(r'^backend = "redis"$', r.stdout, re.M) is not None,
                      f"{label}: check-config reports state.backend = \"redis\"")
                check("deploy-checks-redis-password" not in r.stdout + r.stderr,
                      f"{label}: check-config never prints the Redis password")
        if backend == "redis":
            # The same pod without the Redis URL (a Secret key that does not exist) is refused.
            no_url = {k: v for k, v in env.items() if k != "KEEPTYPING_REDIS_URL"}
            r = subprocess.run([binary, "check-config", "--config", str(cfg)], env=no_url,
                               capture_output=True, text=True, timeout=30)
            check(r.returncode == 64 and "state.redis_url" in r.stderr,
                  f"{label}: check-config refuses the redis backend without a URL with exit 64, naming state.redis_url"
                  + ("" if r.returncode == 64 else f" (got {r.returncode}: {r.stderr.strip()})"))
        # The same check must refuse a broken config: a refire interval above the lifetime.
        broken = re.sub(r'(\[platforms\.onlyfans\]\nrefire_interval = )"[^"]+"', r'\1"9s"', toml_local)
        check(broken != toml_local, f"{label}: built a broken copy of the config")
        cfg.write_text(broken)
        r = subprocess.run([binary, "check-config", "--config", str(cfg)], env=env,
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 64, f"{label}: check-config refuses a broken copy with exit 64 (got {r.returncode})")


def check_values_documented(values_path):
    """Every key in values.yaml has a comment line above it, or sits inside a documented
    block default whose children carry no comments (such as podSecurityContext)."""
    lines = Path(values_path).read_text().splitlines()
    undocumented = []
    stack = []  # (indent, documented_block)
    for i, line in enumerate(lines):
        m = re.match(r"^( *)(?:- )?([A-Za-z_][A-Za-z0-9_.-]*):(?:\s|$)", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prev = lines[i - 1].strip() if i else ""
        commented = prev.startswith("#")
        inside_documented = any(doc for _, doc in stack)
        if not commented and not inside_documented:
            # A parent mapping (next line deeper, with its own commented children) needs none.
            nxt = next((l for l in lines[i + 1:] if l.strip()), "")
            is_parent = len(nxt) - len(nxt.lstrip()) > indent and line.rstrip().endswith(":")
            if not is_parent:
                undocumented.append(f"line {i + 1}: {line.strip()}")
        stack.append((indent, commented and line.rstrip().endswith(":")))
    check(not undocumented, "values.yaml: every value is commented" + (f" (missing: {undocumented})" if undocumented else ""))


def main():
    chart, out, binary = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    repo = Path(__file__).resolve().parents[2]
    all_on = yaml.safe_load((repo / "deploy/tests/values-all-on.yaml").read_text())
    redis = yaml.safe_load((repo / "deploy/tests/values-redis.yaml").read_text())
    rules_file = yaml.safe_load((repo / "deploy/prometheus/keeptyping-rules.yml").read_text())
    dashboard = json.loads((repo / "deploy/grafana/keeptyping.json").read_text())

    print("chart: lint")
    check_lint(chart, {}, "default values")
    check_lint(chart, all_on, "every optional part on")
    check_lint(chart, redis, "three replicas on Redis")

    print("chart: render with default values")
    _, default_docs = render(chart, {}, out / "default")
    kinds = sorted({d["kind"] for d in default_docs})
    check(kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"],
          f"default render has the base kinds: {kinds}")
    check_deployment(default_docs, {}, "default")
    check_config_accepted(default_docs, binary, "default")
    secret = one(default_docs, "Secret")
    check("KEEPTYPING_HOOK_TOKEN" in secret["data"], "default: a hook token is generated when none is given")
    notes = (out / "default" / "NOTES.txt").read_text()
    check("/v1/typing/start" in notes and "/v1/typing/stop" in notes and "Authorization: Bearer" in notes,
          "NOTES.txt tells how to call the start and stop hooks with the token")

    print("chart: render with every optional part on")
    _, docs = render(chart, all_on, out / "all-on")
    kinds = sorted({d["kind"] for d in docs})
    want = ["ConfigMap", "Deployment", "Ingress", "NetworkPolicy", "PodDisruptionBudget", "PrometheusRule",
            "Secret", "Service", "ServiceAccount", "ServiceMonitor"]
    check(kinds == want, f"all-on render has every kind: {kinds}")
    check_deployment(docs, all_on, "all-on")
    check_config_accepted(docs, binary, "all-on")

    svc = one(docs, "Service")
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    check({"http", "metrics"} <= svc_ports, f"Service exposes the hook port and a named metrics port: {svc_ports}")
    sm = one(docs, "ServiceMonitor")
    check([e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"], "ServiceMonitor scrapes the metrics port")
    check(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
          "ServiceMonitor selector matches the Service's labels")
    relabel = sm["spec"]["endpoints"][0].get("relabelings", [])
    check({"targetLabel": "job", "replacement": "keeptyping"} in relabel,
          "ServiceMonitor sets job=keeptyping, which the alert rules select")
    check(sm["metadata"]["labels"].get("release") == "kube-prometheus-stack", "ServiceMonitor carries the selector labels")

    pr = one(docs, "PrometheusRule")
    rendered = pr["spec"]["groups"]
    expected = json.loads(json.dumps(rules_file["groups"]))
    for g in expected:
        for r in g["rules"]:
            r["labels"] = {**{"team": "chat-ops"}, **r.get("labels", {})}
    check(rendered == expected, "PrometheusRule carries the rule file's groups, plus additionalRuleLabels")
    (out / "all-on" / "prometheusrule-spec.yml").write_text(yaml.safe_dump({"groups": rendered}, sort_keys=False))

    dash_cms = [d for d in by_kind(docs, "ConfigMap") if "keeptyping.json" in d.get("data", {})]
    if check(len(dash_cms) == 1, "dashboard ConfigMap rendered"):
        cm = dash_cms[0]
        check(json.loads(cm["data"]["keeptyping.json"]) == dashboard, "dashboard ConfigMap carries deploy/grafana/keeptyping.json")
        check(cm["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard ConfigMap labelled for the Grafana sidecar")
        check(cm["metadata"].get("namespace") == "monitoring", "dashboard ConfigMap goes to grafanaDashboard.namespace")

    ing = one(docs, "Ingress")
    backends = {p["backend"]["service"]["port"]["name"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]}
    check(backends == {"http"}, "Ingress routes only to the hook port, never the admin port")
    netpol = one(docs, "NetworkPolicy")
    check({"Ingress", "Egress"} <= set(netpol["spec"]["policyTypes"]), "NetworkPolicy restricts ingress and egress")

    print("chart: render with three replicas on Redis")
    _, redis_docs = render(chart, redis, out / "redis")
    kinds = sorted({d["kind"] for d in redis_docs})
    check(kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"],
          f"redis render has the base kinds and the NetworkPolicy: {kinds}")
    check_deployment(redis_docs, redis, "redis", backend="redis", replicas=3)
    check_config_accepted(redis_docs, binary, "redis", backend="redis")
    egress = one(redis_docs, "NetworkPolicy")["spec"]["egress"]
    redis_ports = [6379]
    check(any([p["port"] for p in r.get("ports", [])] == redis_ports and r.get("to") == redis["networkPolicy"]["egress"]["redisTo"]
              for r in egress), "redis: the NetworkPolicy lets the pods reach Redis")
    memory_egress = one(docs, "NetworkPolicy")["spec"]["egress"]
    check(not any(6379 in [p["port"] for p in r.get("ports", [])] for r in memory_egress),
          "all-on (memory): the NetworkPolicy opens no Redis port")

    print("chart: values that must not render")
    redis_ok = {"backend": "redis", "redisUrlSecret": {"name": "kt-redis", "key": "redis-url"}}
    cases = [
        ({"replicaCount": "two"}, "at '/replicaCount'", "replicaCount: \"two\" fails the schema"),
        ({"replicaCount": 3}, "replicaCount: 3 is refused while state.backend is \"memory\"", "replicaCount 3 with in-memory state fails with the message"),
        ({"replicaCount": 3, "state": {"backend": "redis"}},
         "state.backend is \"redis\" but state.redisUrlSecret does not name a Secret", "the redis backend without state.redisUrlSecret fails with the message"),
        ({"state": {"backend": "etcd"}}, "/state/backend", "an unknown state backend fails the schema"),
        ({"state": {**redis_ok, "lease": "2 s"}}, "/state/lease", "a lease that is not <N>ms or <N>s fails the schema"),
        ({"state": {**redis_ok, "lease": "90s"}}, "state.lease: 90s is refused", "a lease above 60s fails"),
        ({"state": redis_ok, "terminationGracePeriodSeconds": 12}, "must be above config.shutdown.grace plus state.lease",
         "with Redis, a grace period without room for the hand-over fails"),
        ({"config": {"engine": {"idle_timeout": 30}}}, "/config/engine/idle_timeout", "a duration given as a number fails the schema"),
        ({"config": {"budget": {"typing_share": 1.5}}}, "/config/budget/typing_share", "typing_share above 1 fails the schema"),
        ({"config": {"engine": {"idle_tiemout": "30s"}}}, "idle_tiemout", "a misspelt config key fails the schema"),
        ({"securityContext": {"runAsNonRoot": False}}, "/securityContext", "running as root fails the schema"),
        ({"terminationGracePeriodSeconds": 10}, "must be above config.shutdown.grace", "a grace period not above shutdown.grace fails"),
        ({"config": {"upstream": {"keys": [{"name": "a", "accounts": ["*"]}]}}}, "/config/upstream/keys", "an API key without key_env or key_file fails the schema"),
    ]
    for values, needle, what in cases:
        try:
            helm_python.Chart.load(chart).render(values, name="kt", namespace="chat")
            check(False, what + " (it rendered)")
        except helm_python.HelmError as e:
            check(needle in str(e), what + ("" if needle in str(e) else f" (wrong error: {e})"))

    print("chart: values.yaml")
    check_values_documented(Path(chart) / "values.yaml")

    if FAILURES:
        print(f"check_chart: {len(FAILURES)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
