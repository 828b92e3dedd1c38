{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "kubefit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name for namespaced and cluster-scoped objects alike (unique per release). */}}
{{- define "kubefit.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubefit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "kubefit.labels" -}}
helm.sh/chart: {{ include "kubefit.chart" . }}
{{ include "kubefit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the operator pod; immutable once a Deployment exists, so kept minimal. */}}
{{- define "kubefit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubefit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubefit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubefit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubefit.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the catalog ConfigMap is mounted; KUBEFIT_CATALOG names the file in it. */}}
{{- define "kubefit.catalogDir" -}}/etc/kubefit/catalog{{- end }}
{{- define "kubefit.catalogFile" -}}accelerators.yaml{{- end }}

{{/*
The rules the operator needs on namespaced resources (least privilege, explicit verbs, no wildcards).
Used by the ClusterRole when all namespaces are watched, else by a Role in each watched namespace.
*/}}
{{- define "kubefit.namespacedRules" -}}
# TrainingJobs: watched by the operator; it patches finalizers and kopf's annotations through the main
# resource, and deletes a finished job once runPolicy.ttlSecondsAfterFinished has passed.
- apiGroups: ["kubefit.dev"]
  resources: ["trainingjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# status is written through its subresource; scale clamps workers.replicas to the elastic bounds.
- apiGroups: ["kubefit.dev"]
  resources: ["trainingjobs/status", "trainingjobs/scale"]
  verbs: ["get", "patch"]
# Worker pods and the headless rendezvous Service of each job; patch adopts an orphaned worker.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create", "delete", "get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "delete", "get", "list", "watch"]
# Events on TrainingJobs; kopf patches an event to count repeats.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Cluster-scoped reads, needed whatever the namespaces watched. */}}
{{- define "kubefit.clusterRules" -}}
# Nodes: the accelerators each node offers, for sizing against what the cluster has.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
# kopf checks that the CRDs it serves exist, and follows namespaces for its namespace patterns.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
