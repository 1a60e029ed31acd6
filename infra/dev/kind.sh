#!/usr/bin/env bash
# mlprov on a local kind cluster, for people with Docker: the cluster, the operators, the images, the
# chart with values-dev.yaml, Airflow (official chart, infra/helm/airflow-values.yaml), then the demo DAG.
#
#   infra/dev/kind.sh            # everything, then the demo through Airflow's REST API (tests/cluster)
#   infra/dev/kind.sh up         # everything but the demo
#   infra/dev/kind.sh demo       # the demo only (an installation made by `up`)
#   infra/dev/kind.sh down       # delete the cluster
#
# Needs docker, kind (>= 0.27, NetworkPolicy support in kindnet), kubectl, helm (>= 3.14), git, and the
# project's .venv (`make install`) for `mlprov keys init` and the cluster test.
#
# Airflow's git-sync and the controller fetch the stages' code from a git remote, so the demo runs the
# code of a pushed commit: MLPROV_GIT_REPO (default: this checkout's `origin`, as an https URL the cluster
# can reach) at MLPROV_GIT_REF (default: this checkout's HEAD commit). Optional: MLPROV_ISTIO=1 installs
# Istio (native sidecars) and labels the namespace for injection.
#
# Versions are pinned below; override them through the environment.
set -euo pipefail

CLUSTER=${MLPROV_KIND_CLUSTER:-mlprov}
NODE_IMAGE=${MLPROV_KIND_NODE_IMAGE:-kindest/node:v1.33.1}
NS=${MLPROV_NAMESPACE:-mlprov}
AIRFLOW_NS=${MLPROV_AIRFLOW_NAMESPACE:-airflow}
CNPG_CHART_VERSION=${CNPG_CHART_VERSION:-0.26.0}
STRIMZI_VERSION=${STRIMZI_VERSION:-0.48.0}
ECK_VERSION=${ECK_VERSION:-3.1.0}
MINIO_OPERATOR_VERSION=${MINIO_OPERATOR_VERSION:-7.1.1}
ISTIO_VERSION=${ISTIO_VERSION:-1.27.1}
AIRFLOW_CHART_VERSION=${AIRFLOW_CHART_VERSION:-1.18.0}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${VENV:-$ROOT/.venv}

log() { printf '\n== %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null || { echo "kind.sh: $1 is not installed" >&2; exit 2; }; }

cluster() {
  need docker; need kind; need kubectl; need helm
  if ! kind get clusters | grep -qx "$CLUSTER"; then
    log "kind cluster $CLUSTER ($NODE_IMAGE)"
    kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --wait 120s
  fi
  kubectl config use-context "kind-$CLUSTER" >/dev/null
  for ns in "$NS" "$AIRFLOW_NS"; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
    # Pod Security Admission: every pod of mlprov and Airflow must meet "restricted".
    kubectl label namespace "$ns" --overwrite \
      pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest \
      pod-security.kubernetes.io/warn=restricted pod-security.kubernetes.io/audit=restricted
  done
}

operators() {
  log "operators: CloudNativePG, Strimzi, ECK, MinIO"
  helm repo add cnpg https://cloudnative-pg.github.io/charts >/dev/null
  helm repo add elastic https://helm.elastic.co >/dev/null
  helm repo add minio-operator https://operator.min.io >/dev/null
  helm repo add apache-airflow https://airflow.apache.org >/dev/null
  helm repo update >/dev/null
  helm upgrade --install cnpg cnpg/cloudnative-pg --version "$CNPG_CHART_VERSION" \
    -n cnpg-system --create-namespace --wait
  # restricted: Strimzi gives its pods Pod Security "restricted" contexts (the namespace enforces them).
  helm upgrade --install strimzi oci://quay.io/strimzi-helm/strimzi-kafka-operator --version "$STRIMZI_VERSION" \
    -n strimzi --create-namespace --set "watchNamespaces={$NS}" \
    --set "extraEnvs[0].name=STRIMZI_POD_SECURITY_PROVIDER_CLASS" --set "extraEnvs[0].value=restricted" --wait
  helm upgrade --install eck elastic/eck-operator --version "$ECK_VERSION" -n elastic-system --create-namespace --wait
  helm upgrade --install minio-operator minio-operator/operator --version "$MINIO_OPERATOR_VERSION" \
    -n minio-operator --create-namespace --wait
  if [[ "${MLPROV_ISTIO:-0}" == 1 ]]; then
    log "Istio $ISTIO_VERSION (CNI plugin; native sidecars: Jobs complete when their stage exits)"
    helm repo add istio https://istio-release.storage.googleapis.com/charts >/dev/null && helm repo update >/dev/null
    helm upgrade --install istio-base istio/base --version "$ISTIO_VERSION" -n istio-system --create-namespace --wait
    # The CNI plugin sets up traffic redirection, so pods need no privileged istio-init container
    # (Pod Security "restricted" would refuse it).
    helm upgrade --install istio-cni istio/cni --version "$ISTIO_VERSION" -n istio-system --wait
    helm upgrade --install istiod istio/istiod --version "$ISTIO_VERSION" -n istio-system \
      --set pilot.env.ENABLE_NATIVE_SIDECARS=true --set pilot.cni.enabled=true --wait
    kubectl label namespace "$NS" "$AIRFLOW_NS" istio-injection=enabled --overwrite
  fi
}

images() {
  log "images: controller, sidecar, stages (built here, loaded into kind)"
  for image in controller sidecar stages; do
    docker build -f "$ROOT/infra/docker/$image.Dockerfile" -t "mlprov-$image:dev" "$ROOT"
    kind load docker-image --name "$CLUSTER" "mlprov-$image:dev"
  done
}

signing_identity() {
  if kubectl get secret mlprov-signing-identity -n "$NS" >/dev/null 2>&1; then return; fi
  log "signing identity (mlprov keys init) -> Secret mlprov-signing-identity (the CA key stays here)"
  local keys
  keys=$(mktemp -d)
  "$VENV/bin/mlprov" keys init --dir "$keys" --org "mlprov kind" >/dev/null
  kubectl create secret generic mlprov-signing-identity -n "$NS" \
    --from-file=ca.pem="$keys/keys/ca.pem" --from-file=chain.pem="$keys/keys/chain.pem" \
    --from-file=signer.pem="$keys/keys/signer.pem" --from-file=signer.key="$keys/keys/signer.key"
  echo "CA and its key kept in $keys (verify offline with MLPROV_HOME=$keys)" >&2
}

mlprov_chart() {
  log "mlprov chart (values-dev.yaml)"
  local args=()
  if [[ "${MLPROV_ISTIO:-0}" == 1 ]]; then args+=(--set istio.enabled=true); fi
  helm upgrade --install mlprov "$ROOT/infra/helm/mlprov" -n "$NS" \
    -f "$ROOT/infra/helm/mlprov/values-dev.yaml" ${args[@]+"${args[@]}"} --wait --timeout 20m
}

git_remote() {
  local url=${MLPROV_GIT_REPO:-$(git -C "$ROOT" remote get-url origin)}
  # git@host:org/repo.git -> https://host/org/repo.git (the cluster has no SSH key)
  if [[ "$url" =~ ^git@([^:]+):(.*)$ ]]; then url="https://${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"; fi
  echo "$url"
}

airflow() {
  log "Airflow (official chart $AIRFLOW_CHART_VERSION, infra/helm/airflow-values.yaml)"
  kubectl apply -n "$AIRFLOW_NS" -f - <<EOF
apiVersion: postgresql.cnpg.io/v1
kind: Cluster
metadata: {name: airflow-pg}
spec:
  instances: 1
  storage: {size: 2Gi}
  bootstrap: {initdb: {database: airflow, owner: airflow}}
EOF
  kubectl wait -n "$AIRFLOW_NS" cluster/airflow-pg --for=condition=Ready --timeout=10m
  local uri token
  uri=$(kubectl get secret airflow-pg-app -n "$AIRFLOW_NS" -o jsonpath='{.data.uri}' | base64 -d)
  kubectl create secret generic airflow-metadata -n "$AIRFLOW_NS" --from-literal=connection="$uri" \
    --dry-run=client -o yaml | kubectl apply -f -
  if ! kubectl get secret airflow-fernet-key -n "$AIRFLOW_NS" >/dev/null 2>&1; then
    kubectl create secret generic airflow-fernet-key -n "$AIRFLOW_NS" \
      --from-literal=fernet-key="$("$VENV/bin/python" -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
    kubectl create secret generic airflow-webserver-secret-key -n "$AIRFLOW_NS" \
      --from-literal=webserver-secret-key="$(openssl rand -hex 32)"
  fi
  # The Connection mlprov_controller: the controller's in-cluster URL and its admin token.
  token=$(kubectl get secret mlprov-admin-token -n "$NS" -o jsonpath='{.data.token}' | base64 -d)
  kubectl create secret generic mlprov-controller-connection -n "$AIRFLOW_NS" \
    --from-literal=conn="{\"conn_type\": \"http\", \"host\": \"http://mlprov-controller.$NS.svc.cluster.local:8080\", \"password\": \"$token\"}" \
    --dry-run=client -o yaml | kubectl apply -f -
  helm upgrade --install airflow apache-airflow/airflow --version "$AIRFLOW_CHART_VERSION" -n "$AIRFLOW_NS" \
    -f "$ROOT/infra/helm/airflow-values.yaml" \
    --set dags.gitSync.repo="$(git_remote)" --set dags.gitSync.rev="${MLPROV_GIT_REF:-$(git -C "$ROOT" rev-parse HEAD)}" \
    --wait --timeout 20m
}

demo() {
  log "demo_lifecycle through Airflow's REST API; the controller verifies the tuned model"
  KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config} \
  MLPROV_CLUSTER_NAMESPACE="$NS" MLPROV_CLUSTER_AIRFLOW_NAMESPACE="$AIRFLOW_NS" \
  MLPROV_CLUSTER_CODE_REPO="$(git_remote)" MLPROV_CLUSTER_CODE_REF="${MLPROV_GIT_REF:-$(git -C "$ROOT" rev-parse HEAD)}" \
    "$VENV/bin/pytest" -q -m cluster "$ROOT/tests/cluster/test_demo_cluster.py"
}

up() { cluster; operators; images; signing_identity; mlprov_chart; airflow; }

case "${1:-all}" in
  all) up; demo ;;
  up) up ;;
  demo) demo ;;
  down) kind delete cluster --name "$CLUSTER" ;;
  *) echo "usage: $0 [all|up|demo|down]" >&2; exit 2 ;;
esac
