#!/usr/bin/env bash
# Quick start: builds baton, starts the orchestrator with its embedded store and the
# built-in agents (`baton dev`), submits a sample task, prints its result, and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${BATON_BIN:-}" ]; then
  BATON="$BATON_BIN"   # a binary already built: skip the build
else
  echo "== building baton (release)"
  cargo build --release -p baton-cli --quiet
  BATON="${CARGO_TARGET_DIR:-target}/release/baton"
fi

DATA=$(mktemp -d)
LOG=$DATA/server.log
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true; rm -rf "$DATA"' EXIT

echo "== starting baton dev (orchestrator + built-in agents), data in $DATA"
"$BATON" dev --data-dir "$DATA/data" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
  --metrics-addr off >"$LOG.out" 2>"$LOG" &
SERVER_PID=$!
for _ in $(seq 1 100); do
  grep -q '^baton listening' "$LOG.out" 2>/dev/null && break
  sleep 0.1
done
HTTP=$(sed -n 's/^baton listening http=\([^ ]*\).*/\1/p' "$LOG.out")
[ -n "$HTTP" ] || { echo "server did not start:"; cat "$LOG"; exit 1; }
export BATON_SERVER="http://$HTTP"
echo "   REST API on $BATON_SERVER"
for _ in $(seq 1 100); do
  "$BATON" agents --json 2>/dev/null | grep -q '"agent_id"' && break
  sleep 0.1
done

echo
echo "== submitting a sample task and waiting for its result"
"$BATON" submit --type echo --input 'text:Q4 sales data: 120, 135, 150' \
  --input 'json:{"region": "emea"}' --metadata '{"report_title": "Q4 Sales Analysis"}' --wait

echo
echo "== a task that fails twice, then succeeds on its third attempt"
"$BATON" submit --type fail --metadata '{"fail_times": 2}' --backoff-base-ms 100 --wait

echo
echo "== seed 000's use case 1: report generation (data_ingest -> data_analysis -> synthesis)"
"$BATON" samples "$DATA/samples" >/dev/null
echo "   POST /api/v1/tasks with $DATA/samples/report_request.json (a CSV of monthly sales and a PNG chart)"
curl -sS -X POST "$BATON_SERVER/api/v1/tasks" -H 'content-type: application/json' \
  --data-binary "@$DATA/samples/report_request.json" -o /dev/null -w '   accepted: HTTP %{http_code}\n'
"$BATON" get report-001 --wait 30

echo
echo "== the tasks, and the agents that ran them"
"$BATON" list
"$BATON" agents
