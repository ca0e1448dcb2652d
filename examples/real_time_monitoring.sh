#!/usr/bin/env bash
# Seed 000's use case 2, real-time video monitoring, with curl: POST the seed's
# request (an animated GIF of a scene as a base64 video, rules max_persons and
# restricted_area) and read the task's server-sent events with `curl -N`: each
# frame's detection and each alert arrive as they are produced, then the task.
# BATON_BIN=path skips the build.
source "$(dirname "$0")/_common.sh"
start_dev

echo
echo "== POST /api/v1/tasks (task_type real_time_monitoring)"
curl -sS -X POST "$BATON_SERVER/api/v1/tasks" -H 'content-type: application/json' \
  --data-binary "@$DATA/samples/monitor_request.json" \
  | jqf -c '{task_id, task_type, status}'

echo
echo "== curl -N $BATON_SERVER/api/v1/tasks/monitor-001/events"
curl -sSN "$BATON_SERVER/api/v1/tasks/monitor-001/events" | tee "$DATA/events.txt" \
  | grep -E '^(event|data):' | cut -c1-160 | sed 's/^/   /'
grep -q '^event: alert' "$DATA/events.txt" || { echo "no alert arrived on the event stream" >&2; exit 1; }
grep -q '^event: end' "$DATA/events.txt" || { echo "the event stream did not end with the task" >&2; exit 1; }

echo
echo "== GET /api/v1/tasks/monitor-001: the alerts"
curl -sS "$BATON_SERVER/api/v1/tasks/monitor-001" >"$DATA/task.json"
jqf -c '.output.alerts[] | {alert_id, type, severity, message, timestamp, requires_action}' <"$DATA/task.json"
[ "$(status_of <"$DATA/task.json")" = completed ] || { echo "the monitoring task did not complete" >&2; exit 1; }
echo "== done: monitor-001 completed"
