#!/usr/bin/env bash
# Seed 000's use case 2, real-time video monitoring, with the baton CLI: submit the
# seed's request from a file and watch alerts arrive as they are raised, first for
# people, then as JSON lines for a script. BATON_BIN=path skips the build.
source "$(dirname "$0")/_common.sh"
start_dev

echo
echo "== baton submit --file monitor_request.json"
"$BATON" submit --file "$DATA/samples/monitor_request.json" --json | jqf -c '{task_id, task_type, status}'

echo
echo "== baton watch monitor-001"
"$BATON" watch monitor-001 | tee "$DATA/watch.txt"
grep -q '^alert ' "$DATA/watch.txt" || { echo "baton watch showed no alert" >&2; exit 1; }

echo
echo "== baton watch monitor-001 --json (one JSON object per line), alerts only"
"$BATON" watch monitor-001 --json | grep '"event":"alert"' | tee "$DATA/alerts.jsonl"
[ -s "$DATA/alerts.jsonl" ] || { echo "no alert in the JSON stream" >&2; exit 1; }
echo "== done: monitor-001 completed"
