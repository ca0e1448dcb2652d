#!/usr/bin/env bash
# Quick start: builds baton, starts the orchestrator with its embedded store and the
# built-in agents (`baton dev`), submits a sample task, prints its result, and stops.
# Shared with the other examples: builds (or takes BATON_BIN), starts `baton dev`
# on free ports with a throwaway data directory, writes the sample inputs, and
# stops it on exit.
source "$(dirname "$0")/_common.sh"
start_dev

echo
echo "== submitting a sample task and waiting for its result"
"$BATON" submit --type echo --input 'text:Q4 sales data: 120, 135, 150' \
  --input 'json:{"region": "emea"}' --metadata '{"report_title": "Q4 Sales Analysis"}' --wait

echo
echo "== a task that fails twice, then succeeds on its third attempt"
"$BATON" submit --type fail --metadata '{"fail_times": 2}' --backoff-base-ms 100 --wait

echo
echo "== seed 000's use case 1: report generation (data_ingest -> data_analysis -> synthesis)"
echo "   POST /api/v1/tasks with $DATA/samples/report_request.json (a CSV of monthly sales and a PNG chart)"
curl -sS -X POST "$BATON_SERVER/api/v1/tasks" -H 'content-type: application/json' \
  --data-binary "@$DATA/samples/report_request.json" -o /dev/null -w '   accepted: HTTP %{http_code}\n'
"$BATON" get report-001 --wait 30

echo
echo "== the tasks, and the agents that ran them"
"$BATON" list
"$BATON" agents
