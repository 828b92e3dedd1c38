#!/usr/bin/env bash
# `make demo`: the local sandbox (real control plane + simulated GPU nodes), the CRD, the operator
# and the quickstart job, left running. `make demo-down` (this script with `down`) stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBEFIT=.venv/bin/kubefit
SANDBOX=.venv/bin/kubefit-sandbox  # the sandbox command (sandbox/, installed by make beside the operator)
STATE_DIR="${KUBEFIT_SANDBOX_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubefit/sandbox}"
OPERATOR_PID="$STATE_DIR/demo-operator.pid"
OPERATOR_LOG="$STATE_DIR/logs/demo-operator.log"

operator_alive() { [ -f "$OPERATOR_PID" ] && kill -0 "$(cat "$OPERATOR_PID")" 2>/dev/null; }

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
  setsid "$KUBEFIT" run --all-namespaces --metrics-port 0 >"$OPERATOR_LOG" 2>&1 < /dev/null &
  echo $! > "$OPERATOR_PID"
fi

echo "==> applying examples/quickstart.yaml"
kubectl apply -f examples/quickstart.yaml
job=$(.venv/bin/python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["metadata"]["name"])' examples/quickstart.yaml)
for _ in $(seq 1 90); do
  phase=$(kubectl get tj "$job" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [ "$phase" = "Running" ] && break
  sleep 1
done

echo
kubectl get tj
echo
kubectl get pods -l "kubefit.dev/job=$job" -o wide
echo
echo "==> sizing (kubefit size -f examples/quickstart.yaml)"
echo "    kubefit size plans against the whole accelerator catalog; the operator planned against the"
echo "    accelerators this cluster's nodes have, so the two may choose different devices."
"$KUBEFIT" size -f examples/quickstart.yaml
echo
if [ "${phase:-}" != "Running" ]; then
  echo "The job is not Running yet (phase: ${phase:-none}); see $OPERATOR_LOG" >&2
fi
cat <<MSG
The demo keeps running. Try:
  eval "\$($SANDBOX env)"; kubectl get tj,pods
  kubectl describe tj $job   # conditions (Sized, Admitted, Ready, Running) and events
Stop it all with: make demo-down
MSG
