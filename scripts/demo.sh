#!/usr/bin/env bash
# `make demo`: the local sandbox (real control plane + simulated GPU nodes), the CRD, the operator
# and the quickstart job, left running. `make demo-down` (this script with `down`) stops it all.
# Sourcing it only defines the functions (tests/unit/test_setup_scripts.py).
set -euo pipefail

VENV="${VENV:-.venv}"  # the Makefile passes its VENV; relative to the repository root
KUBEFIT="$VENV/bin/kubefit"
SANDBOX="$VENV/bin/kubefit-sandbox"  # the sandbox command (sandbox/, installed by make beside the operator)
PYTHON="$VENV/bin/python"
STATE_DIR="${KUBEFIT_SANDBOX_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubefit/sandbox}"
OPERATOR_PID="$STATE_DIR/demo-operator.pid"
OPERATOR_LOG="$STATE_DIR/logs/demo-operator.log"

# The PID file outlives a reboot, and its PID may then be another process's: only a live `kubefit run`
# counts (its cmdline: the interpreter, .../kubefit, run, ...); any other PID makes the file stale.
is_demo_operator() {
  local arg has_kubefit=0 has_run=0
  [ -r "/proc/$1/cmdline" ] || return 1
  while IFS= read -r -d '' arg; do
    if [ "${arg##*/}" = kubefit ]; then has_kubefit=1; fi
    if [ "$arg" = run ]; then has_run=1; fi
  done < "/proc/$1/cmdline"
  [ "$has_kubefit" = 1 ] && [ "$has_run" = 1 ]
}

operator_alive() {
  local pid
  [ -f "$OPERATOR_PID" ] || return 1
  pid=$(cat "$OPERATOR_PID")
  if [[ "$pid" =~ ^[0-9]+$ ]] && is_demo_operator "$pid"; then return 0; fi
  rm -f "$OPERATOR_PID"  # stale
  return 1
}

# Polls the job ($1) once a second until it is Running, for up to RUNNING_WAIT_S polls, saying so about
# every 10 s; leaves its last phase in $phase. Returns 1 at once when the operator has exited (nothing
# would ever run the job; the end of its log is printed), 2 when the job is not Running in time.
RUNNING_WAIT_S=90
wait_until_running() {
  local job=$1 second
  phase=""
  for second in $(seq 1 "$RUNNING_WAIT_S"); do
    if ! operator_alive; then
      echo "The operator has exited; the end of its log ($OPERATOR_LOG):" >&2
      tail -n 20 "$OPERATOR_LOG" >&2 || true
      return 1
    fi
    phase=$(kubectl get tj "$job" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    if [ "$phase" = "Running" ]; then return 0; fi
    if [ $((second % 10)) -eq 0 ]; then
      echo "    ${second}s: TrainingJob $job phase ${phase:-not set yet}; waiting for Running (up to ${RUNNING_WAIT_S}s)"
    fi
    sleep 1
  done
  return 2
}

main() {
  cd "$(dirname "$0")/.."
  if [ "${1:-}" = "down" ]; then
    if operator_alive; then
      echo "==> stopping the demo operator (pid $(cat "$OPERATOR_PID"))"
      kill "$(cat "$OPERATOR_PID")" && rm -f "$OPERATOR_PID"
    fi
    echo "==> stopping the sandbox"
    exec "$SANDBOX" down
  fi

  echo "==> sandbox: etcd, kube-apiserver, kube-scheduler, kube-controller-manager and simulated GPU nodes"
  "$SANDBOX" up
  eval "$("$SANDBOX" env)"
  kubectl() { "$SANDBOX" kubectl "$@"; }

  echo "==> installing the TrainingJob CRD"
  kubectl apply -f crds/trainingjob.yaml
  kubectl wait --for condition=established --timeout=60s crd/trainingjobs.kubefit.dev >/dev/null

  if operator_alive; then
    echo "==> operator already running (pid $(cat "$OPERATOR_PID"))"
  else
    echo "==> starting the operator (log: $OPERATOR_LOG)"
    mkdir -p "$(dirname "$OPERATOR_LOG")"
    # Free ports picked at start (the log's `kubefit:` lines name them): the defaults (8000, 8080, 8081) may be taken.
    setsid "$KUBEFIT" run --all-namespaces --metrics-port 0 --liveness-port 0 --checkpoint-port 0 \
      >"$OPERATOR_LOG" 2>&1 < /dev/null &
    echo $! > "$OPERATOR_PID"
  fi

  job=$("$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])' examples/quickstart.yaml)
  # A quickstart left from an earlier demo that has finished (its worker ended) would never be Running
  # again: it is started afresh.
  local before
  before=$(kubectl get tj "$job" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  if [ "$before" = "Succeeded" ] || [ "$before" = "Failed" ]; then
    echo "==> TrainingJob $job from an earlier demo has $before: deleting it to start it again"
    kubectl delete tj "$job" --wait=true
  fi
  echo "==> applying examples/quickstart.yaml"
  kubectl apply -f examples/quickstart.yaml
  echo "==> waiting for TrainingJob $job to be Running"
  local waited=0
  wait_until_running "$job" || waited=$?
  if [ "$waited" -eq 1 ]; then
    echo "The demo failed: the operator is not running. Stop the sandbox with: make demo-down" >&2
    exit 1
  fi

  echo
  kubectl get tj
  echo
  kubectl get pods -l "kubefit.dev/job=$job" -o wide
  echo
  if [ "$waited" -ne 0 ]; then
    echo "The job is not Running after ${RUNNING_WAIT_S}s (phase: ${phase:-none}): see \`kubectl describe tj $job\`" >&2
    echo "and $OPERATOR_LOG. The sandbox and the operator keep running; stop them with: make demo-down" >&2
    exit 1
  fi
  echo "==> sizing (kubefit size -f examples/quickstart.yaml)"
  echo "    kubefit size plans against the whole accelerator catalog; the operator planned against the"
  echo "    accelerators this cluster's nodes have, so the two may choose different devices."
  "$KUBEFIT" size -f examples/quickstart.yaml
  echo
  cat <<MSG
The demo keeps running. Try:
  eval "\$($SANDBOX env)"; kubectl get tj,pods   # env puts kubectl (~/.cache/kubefit/bin) on PATH
  kubectl describe tj $job   # conditions (Sized, Admitted, Ready, Running) and events
The operator's endpoints (free ports): grep '^kubefit:' $OPERATOR_LOG
Stop it all with: make demo-down
MSG
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
