#!/usr/bin/env bash
# Seed 000's use case 1, report generation, with the baton CLI: submit the seed's
# request from a file, watch it run, then show the report. BATON_BIN=path skips
# the build.
source "$(dirname "$0")/_common.sh"
start_dev

echo
echo "== baton submit --file report_request.json"
"$BATON" submit --file "$DATA/samples/report_request.json" --json | jqf -c '{task_id, task_type, status}'

echo
echo "== baton watch report-001 (exits non-zero unless the task completes)"
"$BATON" watch report-001

echo
echo "== baton get report-001 --json: the report's executive summary and recommendations"
"$BATON" get report-001 --json | jqf '.output | {report_id, title, executive_summary, recommendations}'
echo "== done: report-001 completed"
