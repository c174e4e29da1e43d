{{/* Name of the chart, overridable. */}}
{{- define "tokenplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name for resources. */}}
{{- define "tokenplane.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-operator" (include "tokenplane.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding): the release's namespace in it, so releases in
     two namespaces (team-scoped installs) do not claim the same object. */}}
{{- define "tokenplane.clusterScopedName" -}}
{{- printf "%s-%s" (include "tokenplane.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The dashboard ConfigMap and its file: in a shared namespace (monitoring.dashboard.namespace, where Grafana's
     sidecar looks) two releases' would be one object, and the sidecar writes every ConfigMap's keys into one folder,
     so they carry the release's namespace as the cluster-scoped objects do. */}}
{{- define "tokenplane.dashboardName" -}}
{{- printf "%s-dashboard" (include "tokenplane.clusterScopedName" .) }}
{{- end }}

{{/* The dashboard's uid and title in Grafana: every release shipped uid tokenplane-economics, so a second release's
     dashboard replaced the first's (Grafana keys dashboards by uid) and one title stood for both. Both come from the
     release's namespace and name, so an upgrade keeps them (bookmarks and links stay good). A uid has at most 40
     characters. */}}
{{- define "tokenplane.dashboardUid" -}}
{{- printf "tokenplane-%s" (printf "%s/%s" .Release.Namespace .Release.Name | sha256sum | trunc 16) }}
{{- end }}

{{- define "tokenplane.dashboardTitle" -}}
{{- printf "tokenplane: inference economics (%s/%s)" .Release.Namespace .Release.Name }}
{{- end }}

{{/* Standard labels on every object. */}}
{{- define "tokenplane.labels" -}}
app.kubernetes.io/name: {{ include "tokenplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Selector labels. */}}
{{- define "tokenplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Service account name. */}}
{{- define "tokenplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tokenplane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Every value the templates read: values.yaml's settings, an open map (labels) counting as one
     (tests/unit/chart/test_chart.py keeps the list equal to values.yaml). */}}
{{- define "tokenplane.valuePaths" -}}
["nameOverride", "fullnameOverride", "image.repository", "image.tag", "image.digest", "image.pullPolicy", "replicaCount", "podDisruptionBudget.enabled", "podDisruptionBudget.maxUnavailable", "imagePullSecrets", "serviceAccount.create", "serviceAccount.name", "serviceAccount.azureClientId", "azure.subscriptionId", "azure.resourceGroup", "azure.clusterName", "azure.armEndpoint", "operator.watchNamespaces", "operator.pollIntervalSeconds", "operator.logLevel", "operator.servingMetricsPort", "operator.healthPort", "operator.metricsPort", "operator.nodeOverhead.daemonsetCpuMillis", "operator.nodeOverhead.daemonsetMemoryMiB", "operator.nodeOverhead.osDiskGiB", "monitoring.dashboard.enabled", "monitoring.dashboard.namespace", "monitoring.dashboard.labels", "monitoring.podMonitor.enabled", "monitoring.podMonitor.apiVersion", "monitoring.podMonitor.interval", "monitoring.podMonitor.labels", "monitoring.operatorMonitor.enabled", "monitoring.alerts.enabled", "monitoring.alerts.labels", "monitoring.alerts.tokenRateSpikeFactor", "monitoring.alerts.tokenRateMinPerSecond", "monitoring.alerts.p95LatencySeconds", "monitoring.alerts.p95For", "monitoring.alerts.queueDepth", "monitoring.alerts.queueFor", "monitoring.alerts.notServingFor", "monitoring.alerts.replicasAtMaxFor", "monitoring.alerts.operatorDownFor", "serving.image", "serving.rayVersion", "serving.forceRayVersion", "serving.head.cpu", "serving.head.memory", "serving.head.systemNodeVmSize", "networkPolicy.kubeRayNamespace", "networkPolicy.prometheusNamespaces", "networkPolicy.privateSourceRanges", "networkPolicy.operator.enabled", "networkPolicy.operator.dnsNamespace", "networkPolicy.operator.egressCIDRs", "networkPolicy.operator.apiServerPorts", "networkPolicy.operator.prometheusNamespaces", "resources", "nodeSelector", "tolerations", "affinity", "priorityClassName", "podLabels", "podAnnotations", "extraEnv"]
{{- end }}

{{/* Refuse values without one of them: `helm upgrade --reuse-values` from a chart version that lacked it reuses that
     version's defaults too, and the templates read nil (an empty port, a `for:` without a duration, a nil map's
     field that stops the render with no word of why). */}}
{{- define "tokenplane.checkValuePaths" -}}
{{- range $path := include "tokenplane.valuePaths" . | fromJsonArray }}
{{- $node := $.Values }}
{{- range $key := splitList "." $path }}
{{- if not (and (kindIs "map" $node) (hasKey $node $key)) }}
{{- fail (printf "%s is missing from the values: `helm upgrade --reuse-values` from a chart version without it reuses that version's defaults too; upgrade with --reset-then-reuse-values (Helm 3.14+), or give your values with -f (a value set to null is missing too)" $path) }}
{{- end }}
{{- $node = index $node $key }}
{{- end }}
{{- end }}
{{- end }}

{{/* Refuse a release whose operator would reconcile InferenceDeployments another tokenplane release's already does:
     both would create, scale and delete the same RayServices and node pools. Each release's peering objects say what
     it watches (peering.yaml: a ClusterKopfPeering for every namespace, a KopfPeering in each watched one) and, by
     Helm's annotations, whose they are. Helm's `lookup` sees them at install and upgrade; `helm template` and client
     dry runs see none, so they check nothing. */}}
{{- define "tokenplane.checkOverlap" -}}
{{- $watch := .Values.operator.watchNamespaces }}
{{- $self := printf "%s/%s" .Release.Namespace .Release.Name }}
{{- $scope := ternary (printf "namespaces %s" (join ", " $watch)) "every namespace" (gt (len $watch) 0) }}
{{- $cluster := (lookup "kopf.dev/v1" "ClusterKopfPeering" "" "").items | default list }}
{{- $namespaced := (lookup "kopf.dev/v1" "KopfPeering" "" "").items | default list }}
{{- range concat $cluster $namespaced }}
{{- $labels := .metadata.labels | default dict }}
{{- $notes := .metadata.annotations | default dict }}
{{- $other := printf "%s/%s" (get $notes "meta.helm.sh/release-namespace") (get $notes "meta.helm.sh/release-name") }}
{{- if and (hasPrefix (printf "%s-" $.Chart.Name) (get $labels "helm.sh/chart")) (ne $other $self) }}
{{- $theirs := ternary "every namespace" (printf "namespace %s" .metadata.namespace) (eq .kind "ClusterKopfPeering") }}
{{- if or (eq .kind "ClusterKopfPeering") (not $watch) (has .metadata.namespace $watch) }}
{{- fail (printf "operator.watchNamespaces: release %s's operator already watches %s, and this release's (%s, watching %s) would reconcile the same InferenceDeployments; give the two releases namespaces of their own, or uninstall %s first" $other $theirs $self $scope $other) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Fail the install early on values that cannot work. */}}
{{- define "tokenplane.validateValues" -}}
{{- include "tokenplane.checkValuePaths" . }}
{{- include "tokenplane.checkOverlap" . }}
{{- if and .Values.azure.subscriptionId (not .Values.azure.resourceGroup) }}
{{- fail "azure.resourceGroup is required when azure.subscriptionId is set" }}
{{- end }}
{{- if and .Values.azure.subscriptionId (not .Values.azure.clusterName) }}
{{- fail "azure.clusterName is required when azure.subscriptionId is set" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "serviceAccount.name is required when serviceAccount.create is false: the chart binds the operator's RBAC to that account (without a name it would grant it to the namespace's \"default\" account, which every pod there runs as)" }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) .Values.serviceAccount.azureClientId }}
{{- fail (printf "serviceAccount.azureClientId is written only on the service account the chart creates: with serviceAccount.create=false annotate %s with azure.workload.identity/client-id yourself and leave azureClientId empty" .Values.serviceAccount.name) }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if hasPrefix "TOKENPLANE_" .name }}
{{- $set := include "tokenplane.deployment.envNames" $ | fromJsonArray }}
{{- if has .name $set }}
{{- fail (printf "extraEnv: %s is set by the chart from values; set the value instead (deploy/README.md names it)" .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $key, $_ := .Values.podLabels }}
{{- if has $key (list "app.kubernetes.io/name" "app.kubernetes.io/instance" "azure.workload.identity/use") }}
{{- fail (printf "podLabels: %s is set by the chart (the Deployment and its monitors select the pods by app.kubernetes.io/name and instance; azure.workload.identity/use gives them the Azure identity): remove it" $key) }}
{{- end }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (gt (int .Values.replicaCount) 1) (ge (int .Values.podDisruptionBudget.maxUnavailable) (int .Values.replicaCount)) }}
{{- fail (printf "podDisruptionBudget.maxUnavailable %v lets a node drain evict all %v operator replicas at once, leaving none to take the peering over: set it below replicaCount" .Values.podDisruptionBudget.maxUnavailable .Values.replicaCount) }}
{{- end }}
{{- if eq (int .Values.operator.metricsPort) (int .Values.operator.healthPort) }}
{{- fail (printf "operator.metricsPort and operator.healthPort are both %v: give the metrics endpoint another port" .Values.operator.metricsPort) }}
{{- end }}
{{- if and .Values.monitoring.alerts.enabled (hasPrefix "azmonitoring." .Values.monitoring.podMonitor.apiVersion) }}
{{- fail "monitoring.alerts.enabled: Azure Managed Prometheus (monitoring.podMonitor.apiVersion azmonitoring.coreos.com/v1) has no PrometheusRule kind; its rules are Azure prometheusRuleGroups resources. Set monitoring.alerts.enabled=false and create a rule group from templates/prometheusrule.yaml's expressions (az-prom-rules-converter converts them)" }}
{{- end }}
{{- $tested := include "tokenplane.testedRayVersion" . }}
{{- if and (ne (toString .Values.serving.rayVersion) $tested) (not .Values.serving.forceRayVersion) }}
{{- fail (printf "serving.rayVersion %s is not %s, the Ray version tokenplane's serving code is tested with; use an image built on Ray %s, or set serving.forceRayVersion=true to run it untested" (toString .Values.serving.rayVersion) $tested $tested) }}
{{- end }}
{{- end }}

{{/* What the operator watches, as its command line says it (the operator, and the uninstall check of the same
     scope). */}}
{{- define "tokenplane.watchArgs" -}}
{{- range .Values.operator.watchNamespaces }}
- --namespace={{ . }}
{{- else }}
- --all-namespaces
{{- end }}
{{- end }}

{{/* The kopf peering object the replicas share. */}}
{{- define "tokenplane.peeringName" -}}
{{- include "tokenplane.fullname" . }}
{{- end }}

{{/* The Ray version the serving code is tested with (pyproject's ray[serve] pin; a test keeps them equal). */}}
{{- define "tokenplane.testedRayVersion" -}}
2.60.0
{{- end }}

{{/* The operator pod's resources when values.yaml's `resources` is empty (values.yaml says why the sizing is not
     there). */}}
{{- define "tokenplane.defaultResources" -}}
requests:
  cpu: 100m
  memory: 256Mi
limits:
  cpu: "1"
  memory: 512Mi
{{- end }}

{{/* The operator image: repository:tag, or repository@digest when a digest is given. */}}
{{- define "tokenplane.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- /* `--set image.tag=2` is an integer and a values file's `tag: 20240101` a float64, which prints as 2.0240101e+07:
       the schema admits integers only, printed whole. */}}
{{- if kindIs "float64" $tag }}
{{- $tag = int64 $tag }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository (toString $tag) }}
{{- end }}
{{- end }}

{{/* The variables the chart sets from values (deployment.yaml's env, and the watch scope its args set): extraEnv may
     not set them too (tests/unit/chart/test_chart.py keeps this list equal to the rendered env). */}}
{{- define "tokenplane.deployment.envNames" -}}
["TOKENPLANE_SUBSCRIPTION_ID", "TOKENPLANE_RESOURCE_GROUP", "TOKENPLANE_CLUSTER_NAME", "TOKENPLANE_ARM_ENDPOINT", "TOKENPLANE_SERVING_IMAGE", "TOKENPLANE_RAY_VERSION", "TOKENPLANE_HEAD_CPU", "TOKENPLANE_HEAD_MEMORY", "TOKENPLANE_SYSTEM_NODE_VM_SIZE", "TOKENPLANE_POLL_INTERVAL_S", "TOKENPLANE_LOG_LEVEL", "TOKENPLANE_HEALTH_PORT", "TOKENPLANE_METRICS_PORT", "TOKENPLANE_OPERATOR_METRICS_PORT", "TOKENPLANE_NODE_DAEMONSET_CPU_MILLIS", "TOKENPLANE_NODE_DAEMONSET_MEMORY_MIB", "TOKENPLANE_NODE_OS_DISK_GIB", "TOKENPLANE_PEERING_NAME", "TOKENPLANE_KUBERAY_NAMESPACE", "TOKENPLANE_OPERATOR_NAMESPACE", "TOKENPLANE_METRICS_NAMESPACES", "TOKENPLANE_PRIVATE_SOURCE_RANGES", "TOKENPLANE_NAMESPACES", "TOKENPLANE_ALL_NAMESPACES"]
{{- end }}
