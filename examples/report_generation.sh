#!/usr/bin/env bash
# Seed 000's use case 1, report generation, with curl: POST the seed's request (a
# CSV of monthly sales as text and a PNG chart as a base64 image), follow the
# task's events as the flow data_ingest -> data_analysis -> synthesis runs, and
# print the report. BATON_BIN=path skips the build.
source "$(dirname "$0")/_common.sh"
start_dev

echo
echo "== POST /api/v1/tasks (task_type report_generation)"
curl -sS -X POST "$BATON_SERVER/api/v1/tasks" -H 'content-type: application/json' \
  --data-binary "@$DATA/samples/report_request.json" \
  | jqf -c '{task_id, task_type, status}'

echo
echo "== GET /api/v1/tasks/report-001/events (server-sent events, until the task ends)"
curl -sSN "$BATON_SERVER/api/v1/tasks/report-001/events" | tee "$DATA/events.txt" \
  | grep -E '^(event|data):' | cut -c1-160 | sed 's/^/   /'
grep -q '^event: end' "$DATA/events.txt" || { echo "the event stream did not end with the task" >&2; exit 1; }

echo
echo "== GET /api/v1/tasks/report-001: the report"
curl -sS "$BATON_SERVER/api/v1/tasks/report-001" >"$DATA/task.json"
jqf '.output' <"$DATA/task.json"
[ "$(status_of <"$DATA/task.json")" = completed ] || { echo "the report did not complete" >&2; exit 1; }
echo "== done: report-001 completed"
