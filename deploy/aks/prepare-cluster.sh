#!/usr/bin/env bash
# Prepare an AKS cluster for tokenplane, idempotently (safe to run again):
#   1. the OIDC issuer and workload identity on the cluster;
#   2. a user-assigned identity for the operator, with a custom role holding exactly the agent-pool actions the
#      operator calls (read, write, delete; not Contributor), scoped to this cluster;
#   3. the federated credential binding that identity to the operator's ServiceAccount;
#   4. KubeRay (pinned) and the NVIDIA device plugin with a MIG strategy;
#   5. the GPU quota check, in the cluster's region, for the VM sizes your InferenceDeployments use;
# and prints the `helm install` that matches (namespace, ServiceAccount, client id).
#
#   deploy/aks/prepare-cluster.sh --subscription SUB --resource-group RG --cluster NAME \
#       [--namespace tokenplane] [--identity tokenplane-operator] [--vm-size Standard_NC40ads_H100_v5 --nodes 2]... \
#       [--mig-strategy mixed|single|none] [--dry-run]
#
# --dry-run prints every command (az, helm, kubectl) without running any, with <placeholders> for what Azure
# would answer. Needs: az (logged in), helm, kubectl.
set -euo pipefail

KUBERAY_VERSION="1.7.0"
DEVICE_PLUGIN_VERSION="0.17.1"
# The chart names the operator's ServiceAccount "<chart name>-operator" (charts/tokenplane/templates/_helpers.tpl).
SERVICE_ACCOUNT="tokenplane-operator"
ROLE_NAME="tokenplane agent pool operator"
# Exactly the ARM operations the operator makes (adapters/azure.py: get, list, create-or-update and delete agent
# pools, read the cluster for its region); tests/operator/test_rbac.py compares these lists with the requests the
# operator sends the ARM emulator.
ROLE_ACTIONS=(
  "Microsoft.ContainerService/managedClusters/read"
  "Microsoft.ContainerService/managedClusters/agentPools/read"
  "Microsoft.ContainerService/managedClusters/agentPools/write"
  "Microsoft.ContainerService/managedClusters/agentPools/delete"
)
# The region's vCPU quota and the VM sizes' families are subscription-level reads: a second, read-only role there.
QUOTA_ROLE_NAME="tokenplane quota reader"
QUOTA_ROLE_ACTIONS=(
  "Microsoft.Compute/locations/usages/read"
  "Microsoft.Compute/skus/read"
)

subscription="" resource_group="" cluster="" namespace="tokenplane" identity="tokenplane-operator"
mig_strategy="mixed" dry_run=false
vm_sizes=() node_counts=()

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --subscription) subscription="${2:?}"; shift 2 ;;
    --resource-group) resource_group="${2:?}"; shift 2 ;;
    --cluster) cluster="${2:?}"; shift 2 ;;
    --namespace) namespace="${2:?}"; shift 2 ;;
    --identity) identity="${2:?}"; shift 2 ;;
    --vm-size) vm_sizes+=("${2:?}"); node_counts+=(1); shift 2 ;;
    --nodes) [[ ${#vm_sizes[@]} -gt 0 ]] || die "--nodes follows a --vm-size"; node_counts[-1]="${2:?}"; shift 2 ;;
    --mig-strategy) mig_strategy="${2:?}"; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
[[ -n "$subscription" && -n "$resource_group" && -n "$cluster" ]] || die "--subscription, --resource-group and --cluster are required"
[[ "$namespace" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "--namespace $namespace is not a Kubernetes namespace name"
case "$mig_strategy" in mixed|single|none) ;; *) die "--mig-strategy must be mixed, single or none" ;; esac

# Run a command, or only print it under --dry-run. Every command is printed, shell-quoted, after "+ ".
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if ! $dry_run; then "$@"; fi
}
# A value Azure answers (printed like `run`); under --dry-run a <placeholder> naming it.
query() {
  local placeholder="$1"; shift
  # The command goes to stderr: stdout is the answer the caller captures.
  { printf '+'; printf ' %q' "$@"; printf '\n'; } >&2
  if $dry_run; then echo "<$placeholder>"; else "$@"; fi
}
step() { printf '\n== %s\n' "$*"; }

step "subscription"
run az account set --subscription "$subscription"
cluster_id="/subscriptions/$subscription/resourceGroups/$resource_group/providers/Microsoft.ContainerService/managedClusters/$cluster"
location=$(query "location-of-$cluster" az aks show -g "$resource_group" -n "$cluster" --query location -o tsv)

step "OIDC issuer and workload identity on $cluster"
run az aks update -g "$resource_group" -n "$cluster" --enable-oidc-issuer --enable-workload-identity
issuer=$(query "oidc-issuer-of-$cluster" az aks show -g "$resource_group" -n "$cluster" --query oidcIssuerProfile.issuerUrl -o tsv)

step "identity $identity with a custom role on the cluster's agent pools"
run az identity create -g "$resource_group" -n "$identity" --location "$location" -o none
client_id=$(query "client-id-of-$identity" az identity show -g "$resource_group" -n "$identity" --query clientId -o tsv)
principal_id=$(query "principal-id-of-$identity" az identity show -g "$resource_group" -n "$identity" --query principalId -o tsv)
actions=$(printf '"%s",' "${ROLE_ACTIONS[@]}")
role_json=$(printf '{"Name": "%s", "Description": "Create, scale and delete the GPU agent pools of InferenceDeployments (tokenplane operator).", "Actions": [%s], "NotActions": [], "AssignableScopes": ["%s"]}' \
  "$ROLE_NAME" "${actions%,}" "$cluster_id")
existing=$(query "existing-role-id-or-empty" az role definition list --name "$ROLE_NAME" --custom-role-only true --scope "$cluster_id" --query "[0].id" -o tsv)
if [[ -n "$existing" && "$existing" != "<existing-role-id-or-empty>" ]]; then
  run az role definition update --role-definition "$role_json"
else
  run az role definition create --role-definition "$role_json"
fi
run az role assignment create --assignee-object-id "$principal_id" --assignee-principal-type ServicePrincipal \
  --role "$ROLE_NAME" --scope "$cluster_id" -o none
subscription_id="/subscriptions/$subscription"
actions=$(printf '"%s",' "${QUOTA_ROLE_ACTIONS[@]}")
quota_json=$(printf '{"Name": "%s", "Description": "Read the vCPU quota and VM sizes of the region before creating GPU agent pools (tokenplane operator).", "Actions": [%s], "NotActions": [], "AssignableScopes": ["%s"]}' \
  "$QUOTA_ROLE_NAME" "${actions%,}" "$subscription_id")
existing=$(query "existing-quota-role-id-or-empty" az role definition list --name "$QUOTA_ROLE_NAME" --custom-role-only true --scope "$subscription_id" --query "[0].id" -o tsv)
if [[ -n "$existing" && "$existing" != "<existing-quota-role-id-or-empty>" ]]; then
  run az role definition update --role-definition "$quota_json"
else
  run az role definition create --role-definition "$quota_json"
fi
run az role assignment create --assignee-object-id "$principal_id" --assignee-principal-type ServicePrincipal \
  --role "$QUOTA_ROLE_NAME" --scope "$subscription_id" -o none

step "federated credential: $identity <- ServiceAccount $namespace/$SERVICE_ACCOUNT"
run az identity federated-credential create --name "$SERVICE_ACCOUNT" --identity-name "$identity" \
  -g "$resource_group" --issuer "$issuer" --subject "system:serviceaccount:$namespace:$SERVICE_ACCOUNT" \
  --audiences api://AzureADTokenExchange -o none

step "KubeRay $KUBERAY_VERSION and the NVIDIA device plugin $DEVICE_PLUGIN_VERSION (MIG strategy $mig_strategy)"
run az aks get-credentials -g "$resource_group" -n "$cluster" --overwrite-existing
run helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
run helm repo add nvdp https://nvidia.github.io/k8s-device-plugin --force-update
run helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  -n kuberay-system --create-namespace --wait
# AKS installs the GPU driver on GPU nodes, not the device plugin; it runs only where the nodes carry a GPU.
run helm upgrade --install nvidia-device-plugin nvdp/nvidia-device-plugin --version "$DEVICE_PLUGIN_VERSION" \
  -n kube-system --set migStrategy="$mig_strategy" \
  --set-string 'nodeSelector.kubernetes\.azure\.com/accelerator=nvidia' \
  --set 'tolerations[0].key=nvidia.com/gpu' --set 'tolerations[0].operator=Exists' \
  --set 'tolerations[0].effect=NoSchedule'

step "GPU quota in $location"
short=0
for i in "${!vm_sizes[@]}"; do
  size="${vm_sizes[$i]}" nodes="${node_counts[$i]}"
  family=$(query "quota-family-of-$size" az vm list-skus --location "$location" --size "$size" --resource-type virtualMachines --query "[0].family" -o tsv)
  vcpus=$(query "vcpus-of-$size" az vm list-skus --location "$location" --size "$size" --resource-type virtualMachines --query "[0].capabilities[?name=='vCPUs'].value | [0]" -o tsv)
  free=$(query "free-vcpus-of-$family" az vm list-usage --location "$location" --query "[?name.value=='$family'] | [0].[limit, currentValue]" -o tsv)
  if $dry_run; then
    echo "quota: $size x $nodes needs <vcpus-of-$size> x $nodes vCPUs of $family in $location"
    continue
  fi
  read -r limit used <<<"$free"
  need=$(( vcpus * nodes ))
  if (( limit - used < need )); then
    echo "quota: $family in $location has $(( limit - used )) vCPUs free, $size x $nodes needs $need: request more (Portal > Quotas > Compute)"
    short=1
  else
    echo "quota: $family in $location: $need of $(( limit - used )) free vCPUs needed for $size x $nodes"
  fi
done

step "next: install tokenplane"
echo "helm upgrade --install tokenplane charts/tokenplane -n $namespace --create-namespace \\"
echo "  --set azure.subscriptionId=$subscription --set azure.resourceGroup=$resource_group \\"
echo "  --set azure.clusterName=$cluster --set serviceAccount.azureClientId=$client_id"
exit "$short"
