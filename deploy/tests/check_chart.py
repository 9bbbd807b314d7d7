#!/usr/bin/env python3
"""Lints and renders the Helm chart, and checks what the rendered manifests promise.

Usage: check_chart.py CHART OUT_DIR KEEPTYPING_BINARY

Renders the chart with default values and with deploy/tests/values-all-on.yaml (every optional
part switched on) into OUT_DIR/<case>/, one file per template, for kubernetes-validate and
yamllint to read afterwards. Checks here:
- helm lint (strict) reports no warning or error for either value set;
- values that violate values.schema.json fail to render, and replicaCount 2 fails with the
  in-memory message;
- the Deployment keeps its contract: probes on /livez and /readyz, terminationGracePeriodSeconds
  above shutdown.grace, non-root, read-only root filesystem, all capabilities dropped;
- the ConfigMap's TOML is accepted by `keeptyping check-config`, run with the environment and
  files the pod would get from the Secret (and a broken copy is refused, so the check can fail);
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


def check_lint(chart, values, label):
    report = helm_python.lint(chart, values, strict=True, namespace="chat")
    bad = [m for m in report["messages"] if m["severity"] >= 2]
    check(not report["errors"] and not bad,
          f"helm lint --strict ({label}): {report['errors'] or bad or 'clean'}")


def check_deployment(docs, values, label):
    dep = one(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    grace = seconds(values.get("config", {}).get("shutdown", {}).get("grace", "10s"))
    check(dep["spec"]["replicas"] == 1, f"{label}: one replica")
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
    check(dep["spec"]["strategy"]["type"] == "Recreate", f"{label}: Recreate strategy (never two pods at once)")
    return dep


def check_config_accepted(docs, binary, label):
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
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **data}
        r = subprocess.run([binary, "check-config", "--config", str(cfg)], env=env,
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 0, f"{label}: keeptyping check-config accepts the rendered TOML"
              + ("" if r.returncode == 0 else f" (exit {r.returncode}: {r.stderr.strip()})"))
        if r.returncode == 0:
            # The listen addresses and the secrets the pod gets must be what the service resolved.
            check('listen = "0.0.0.0:8080"' in r.stdout and 'listen = "0.0.0.0:9090"' in r.stdout,
                  f"{label}: check-config reports both listeners from the chart's ports")
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
    rules_file = yaml.safe_load((repo / "deploy/prometheus/keeptyping-rules.yml").read_text())
    dashboard = json.loads((repo / "deploy/grafana/keeptyping.json").read_text())

    print("chart: lint")
    check_lint(chart, {}, "default values")
    check_lint(chart, all_on, "every optional part on")

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

    print("chart: values that must not render")
    cases = [
        ({"replicaCount": "two"}, "at '/replicaCount'", "replicaCount: \"two\" fails the schema"),
        ({"replicaCount": 2}, "replicaCount: 2 is refused while state.backend is \"memory\"", "replicaCount 2 with in-memory state fails with the message"),
        ({"state": {"backend": "redis"}}, "/state/backend", "an unknown state backend fails the schema"),
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
