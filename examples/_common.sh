# Shared by the example scripts: finds or builds baton, starts `baton dev` (the
# orchestrator and the built-in agents in one process) on free ports with a
# throwaway data directory, and stops it on exit. Source it; do not run it.
#
#   BATON_BIN=path/to/baton   use that binary instead of building a release one
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -n "${BATON_BIN:-}" ]; then
  BATON="$BATON_BIN"
else
  echo "== building baton (release)"
  cargo build --release -p baton-cli --quiet
  BATON="${CARGO_TARGET_DIR:-target}/release/baton"
fi
[ -x "$BATON" ] || { echo "no baton binary at $BATON" >&2; exit 1; }

DATA=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$DATA"
}
trap cleanup EXIT

# jq when it is installed; otherwise the JSON as it is.
jqf() { if command -v jq >/dev/null 2>&1; then jq "$@"; else cat; echo; fi; }

# The top-level "status" of a task document on stdin.
status_of() {
  if command -v jq >/dev/null 2>&1; then jq -r .status
  else python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])'; fi
}

start_dev() {
  echo "== starting baton dev (orchestrator + built-in agents), data in $DATA"
  "$BATON" dev --data-dir "$DATA/data" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
    --metrics-addr off >"$DATA/server.out" 2>"$DATA/server.log" &
  SERVER_PID=$!
  for _ in $(seq 1 200); do
    grep -q '^baton listening' "$DATA/server.out" 2>/dev/null && break
    sleep 0.1
  done
  HTTP=$(sed -n 's/^baton listening http=\([^ ]*\).*/\1/p' "$DATA/server.out")
  [ -n "$HTTP" ] || { echo "server did not start:" >&2; cat "$DATA/server.log" >&2; exit 1; }
  export BATON_SERVER="http://$HTTP"
  echo "   REST API on $BATON_SERVER"
  for _ in $(seq 1 200); do
    "$BATON" agents --json 2>/dev/null | grep -q '"agent_id"' && break
    sleep 0.1
  done
  echo "== writing seed 000's sample inputs to $DATA/samples"
  "$BATON" samples "$DATA/samples" | sed 's/^/   /'
}
