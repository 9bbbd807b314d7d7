#!/usr/bin/env bash
# Deploy checks for keeptyping: the Docker file, the Helm chart (memory and Redis backends), the
# alert rules, the Grafana dashboard, and a real Prometheus and a headless Chromium against the
# running service (memory backend).
#
# Run from the repository root after `cargo build --release`:   .ci/deploy-checks.sh
# Exits non-zero on any failure. Installs nothing; it needs:
#   apt:  prometheus (promtool and the server), chromium, curl, python3
#   pip:  helm-python-sdk kubernetes-validate yamllint pyyaml
# Every process it starts listens on 127.0.0.1, is bounded by `timeout`, and is killed on exit.
# Artifacts (rendered manifests, logs, the status page screenshot) go to target/deploy-checks/.

set -euo pipefail

BIN=${KEEPTYPING_BIN:-target/release/keeptyping}
CHART=deploy/helm/keeptyping
OUT=target/deploy-checks
RUN_SECONDS=240   # upper bound on each background process

step() { printf '\n== %s\n' "$*"; }
die() { printf 'deploy-checks: FAILED: %s\n' "$*" >&2; exit 1; }

[[ -f Cargo.toml && -d deploy ]] || die "run from the repository root"
[[ -x $BIN ]] || die "$BIN is missing: run cargo build --release first"
for tool in promtool prometheus chromium curl python3 kubernetes-validate yamllint; do
  command -v "$tool" >/dev/null || die "$tool is not installed (see the top of $0)"
done
python3 -c 'import helm_python, yaml' 2>/dev/null || die "python modules helm_python and yaml are not installed"

rm -rf "$OUT"
mkdir -p "$OUT"

# --- processes started here, killed on any exit ---------------------------------------------
PIDS=()
WORK=$(mktemp -d)
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

step "Dockerfile (static checks: no image is built here)"
python3 deploy/tests/check_dockerfile.py deploy/Dockerfile 8080 9090

step "chart: copies of the rules and the dashboard are identical to their sources"
cmp deploy/prometheus/keeptyping-rules.yml "$CHART/files/keeptyping-rules.yml" \
  || die "$CHART/files/keeptyping-rules.yml differs from deploy/prometheus/keeptyping-rules.yml"
cmp deploy/grafana/keeptyping.json "$CHART/files/keeptyping.json" \
  || die "$CHART/files/keeptyping.json differs from deploy/grafana/keeptyping.json"
echo "  ok    both copies identical"

step "chart: lint, render (memory: default and every optional part on; redis: 3 replicas), schema, refusals"
python3 deploy/tests/check_chart.py "$CHART" "$OUT/chart" "$BIN"

step "chart: rendered manifests pass kubernetes-validate --strict"
mapfile -t MANIFESTS < <(find "$OUT/chart" -name '*.yaml' ! -name 'prometheusrule-spec.yml' | sort)
(( ${#MANIFESTS[@]} >= 15 )) || die "expected at least 15 rendered manifests, found ${#MANIFESTS[@]}"
kubernetes-validate --strict --quiet "${MANIFESTS[@]}"
echo "  ok    ${#MANIFESTS[@]} manifests valid (ServiceMonitor and PrometheusRule are CRDs without a"
echo "        built-in schema: check_chart.py checks them and promtool checks the rule spec below)"

step "chart and rules: yamllint"
yamllint --strict -c deploy/tests/yamllint.yaml "${MANIFESTS[@]}" deploy/prometheus "$CHART/values.yaml" \
  "$CHART/Chart.yaml" deploy/tests/values-all-on.yaml deploy/tests/values-redis.yaml
echo "  ok    yamllint clean"

step "alert rules: promtool"
promtool check rules deploy/prometheus/keeptyping-rules.yml "$OUT/chart/all-on/prometheusrule-spec.yml"
(cd deploy/prometheus && promtool test rules keeptyping-rules.test.yml)
python3 deploy/tests/check_rule_tests.py deploy/prometheus/keeptyping-rules.yml deploy/prometheus/keeptyping-rules.test.yml

step "dashboard, alerts and README: JSON parses, every expression names only exported metrics, every README series is emitted"
python3 -m json.tool deploy/grafana/keeptyping.json >/dev/null && echo "  ok    deploy/grafana/keeptyping.json parses"
python3 deploy/tests/promql_names.py check .

step "live: mock upstream, keeptyping and Prometheus on loopback"
read -r MOCK_PORT HOOK_PORT ADMIN_PORT PROM_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks:
    s.close()
PY
)
timeout "$RUN_SECONDS" "$BIN" mock-upstream --listen "127.0.0.1:$MOCK_PORT" >"$OUT/mock.log" 2>&1 &
PIDS+=($!)
env KEEPTYPING__SERVER__LISTEN="127.0.0.1:$HOOK_PORT" \
  KEEPTYPING__ADMIN__LISTEN="127.0.0.1:$ADMIN_PORT" \
  KEEPTYPING__UPSTREAM__BASE_URL="http://127.0.0.1:$MOCK_PORT" \
  ONLYFANSAPI_API_KEY=deploy-checks-key KEEPTYPING_HOOK_TOKEN=deploy-checks-token \
  KEEPTYPING_ADMIN_TOKEN=deploy-checks-admin-token \
  KEEPTYPING__ACCOUNTS__CALLBACK_URL="http://127.0.0.1:$MOCK_PORT/deploy-checks/attempt-callback" \
  KEEPTYPING_CALLBACK_SECRET=deploy-checks-callback-secret \
  timeout "$RUN_SECONDS" "$BIN" serve >"$OUT/keeptyping.log" 2>&1 &
PIDS+=($!)

cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/deploy/prometheus/keeptyping-rules.yml
scrape_configs:
  - job_name: keeptyping
    static_configs:
      - targets: ["127.0.0.1:$ADMIN_PORT"]
YML
timeout "$RUN_SECONDS" prometheus --config.file="$WORK/prometheus.yml" \
  --storage.tsdb.path="$WORK/tsdb" --web.listen-address="127.0.0.1:$PROM_PORT" \
  >"$OUT/prometheus.log" 2>&1 &
PIDS+=($!)

for url in "http://127.0.0.1:$MOCK_PORT/_mock/config" "http://127.0.0.1:$ADMIN_PORT/readyz" \
  "http://127.0.0.1:$PROM_PORT/-/ready"; do
  for _ in $(seq 1 60); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && break
    sleep 0.5
  done
  curl -fsS -o /dev/null "$url" || die "$url never answered (logs in $OUT)"
done
echo "  ok    mock :$MOCK_PORT, hooks :$HOOK_PORT, admin :$ADMIN_PORT, prometheus :$PROM_PORT"

python3 deploy/tests/live_check.py . "http://127.0.0.1:$HOOK_PORT" "http://127.0.0.1:$ADMIN_PORT" \
  "http://127.0.0.1:$MOCK_PORT" "http://127.0.0.1:$PROM_PORT" "$OUT/status-page.png"

printf '\ndeploy-checks: all passed (artifacts in %s)\n' "$OUT"
