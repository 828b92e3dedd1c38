{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "kubefit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Release-qualified name for namespaced objects: unique within the release's namespace. Cluster-scoped
objects use kubefit.clusterScopedName, since two releases of one name in two namespaces share it.
*/}}
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

{{/*
Name for cluster-scoped objects (ClusterRole, ClusterRoleBinding, ValidatingWebhookConfiguration):
"<namespace>-<fullname>", so that releases of the same name in different namespaces do not collide.
Past 63 characters it is cut to 54 and ends in "-" and 8 hex digits of the full name's sha256, so two
long names that share a prefix still differ.
*/}}
{{- define "kubefit.clusterScopedName" -}}
{{- $name := printf "%s-%s" .Release.Namespace (include "kubefit.fullname" .) }}
{{- if gt (len $name) 63 }}
{{- printf "%s-%s" ($name | trunc 54 | trimSuffix "-") ($name | sha256sum | trunc 8) }}
{{- else }}
{{- $name }}
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

{{/* The checkpoint handshake: its Service, the URL workers are told, and the Secret with the HMAC key. */}}
{{- define "kubefit.checkpointService" -}}
{{- printf "%s-checkpoints" (include "kubefit.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}
{{- define "kubefit.checkpointUrl" -}}
{{- default (printf "http://%s.%s.svc:%d" (include "kubefit.checkpointService" .) .Release.Namespace (.Values.checkpoint.port | int)) .Values.checkpoint.url }}
{{- end }}
{{- define "kubefit.generatedCheckpointKeySecret" -}}
{{- printf "%s-checkpoint-key" (include "kubefit.fullname" . | trunc 48 | trimSuffix "-") }}
{{- end }}
{{- define "kubefit.checkpointKeySecret" -}}
{{- default (include "kubefit.generatedCheckpointKeySecret" .) .Values.checkpoint.existingSecret }}
{{- end }}
{{- define "kubefit.checkpointKeyDir" -}}/etc/kubefit/checkpoint{{- end }}

{{/*
The rules the operator needs on namespaced resources: exactly the calls it makes (explicit verbs, no
wildcards). tests/unit/test_rbac.py derives the same list from the code and fails when the two differ.
Used by the ClusterRole when all namespaces are watched, else by a Role in each watched namespace.
*/}}
{{- define "kubefit.namespacedRules" -}}
# TrainingJobs: the reconciler reads a job its watch has not shown yet (get) and deletes a finished one once
# runPolicy.ttlSecondsAfterFinished has passed; kopf lists and watches them, and removes (patch) the finalizer
# kubefit.dev/finalizer that earlier versions of the operator put on jobs.
- apiGroups: ["kubefit.dev"]
  resources: ["trainingjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# The sizing, conditions and phase are written through the status subresource.
- apiGroups: ["kubefit.dev"]
  resources: ["trainingjobs/status"]
  verbs: ["patch"]
# The owner references on workers and Services set blockOwnerDeletion, which the
# OwnerReferencesPermissionEnforcement admission plugin (on by default in OpenShift) allows only to a client
# that may update the owner's finalizers: without it every worker create is refused there.
- apiGroups: ["kubefit.dev"]
  resources: ["trainingjobs/finalizers"]
  verbs: ["update"]
# Worker pods: created and deleted by the reconciler, patched to adopt an orphaned worker; kopf lists and
# watches them (the worker index, and the accelerators each node's pods hold).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create", "delete", "patch", "list", "watch"]
# Each job's headless rendezvous Service is created once (one of its name that exists is read, to check
# that it is the job's); the garbage collector deletes it with the job.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "get"]
# Events on TrainingJobs (kopf posts each one with a create).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# ResourceQuotas: a job is admitted only within the room its namespace's quotas leave (kopf lists and
# watches them; a scheduling pass that preempts or shrinks jobs lists them afresh).
- apiGroups: [""]
  resources: ["resourcequotas"]
  verbs: ["list", "watch"]
{{- end }}

{{/* Cluster-scoped reads, needed whatever the namespaces watched. */}}
{{- define "kubefit.clusterRules" -}}
# Nodes: the accelerators each node offers, for sizing against what the cluster has.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
# kopf lists and watches CRDs to follow the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# kopf follows namespaces only when it serves a list of them (--namespace), not with --all-namespaces.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}

{{/* Values the schema cannot check: the operator's ports must differ. */}}
{{- define "kubefit.validate" -}}
{{- $ports := list (.Values.metrics.port | int) (.Values.liveness.port | int) (.Values.checkpoint.port | int) }}
{{- if .Values.webhook.enabled }}
{{- $ports = append $ports (.Values.webhook.port | int) }}
{{- end }}
{{- if ne (len (uniq $ports)) (len $ports) }}
{{- fail (printf "metrics.port, liveness.port, checkpoint.port and webhook.port must differ (got %v)" $ports) }}
{{- end }}
{{- /*
A flag the chart sets, given again in extraArgs, wins silently (argparse keeps the last, and takes a prefix
of a flag for it): a metrics or checkpoint port off the one the Service targets, a Lease the Role does not
name. Each is set through its value instead.
*/}}
{{- $managed := dict "--namespace" "watchNamespaces" "--all-namespaces" "watchNamespaces" "--metrics-port" "metrics.port" "--liveness-port" "liveness.port" "--max-workers-per-job" "maxWorkersPerJob" "--cluster-domain" "clusterDomain" "--admission-policy" "admission.policy" "--head-of-line-timeout-seconds" "admission.headOfLineTimeoutSeconds" "--checkpoint-port" "checkpoint.port" "--checkpoint-url" "checkpoint.url" "--checkpoint-key-file" "checkpoint.existingSecret" "--webhook-port" "webhook.port" "--webhook-cert-file" "webhook.existingSecret" "--webhook-key-file" "webhook.existingSecret" "--leader-election" "leaderElection.enabled" "--leader-election-lease-name" "leaderElection.leaseName" "--leader-election-namespace" "the release's namespace" }}
{{- /*
The rest of `kubefit run`'s flags (tests/unit/test_chart.py holds the two lists to its parser): any other
flag made a successful install an operator that exits at start, in CrashLoopBackOff.
*/}}
{{- $own := list "--bind-address" "--catalog" "--debug" "--leader-election-lease-seconds" "--resync-seconds" "--verbose" }}
{{- range .Values.extraArgs }}
{{- $name := index (splitList "=" (toString .)) 0 }}
{{- if and (not (hasPrefix "--" $name)) (regexMatch "^-[a-zA-Z]*[nA]" $name) }}
{{- fail (printf "extraArgs: %s is set by the chart from watchNamespaces; set that value instead" $name) }}
{{- end }}
{{- if and (not (hasPrefix "--" $name)) (regexMatch "^-[a-zA-Z]" $name) (not (regexMatch "^-v+$" $name)) }}
{{- fail (printf "extraArgs: %s is not a flag of kubefit run (its short flags: -v; see kubefit run --help)" $name) }}
{{- end }}
{{- if and (hasPrefix "--" $name) (gt (len $name) 2) }}
{{- range $flag, $value := $managed }}
{{- if hasPrefix $name $flag }}
{{- fail (printf "extraArgs: %s is set by the chart from %s; set that value instead (given twice, the last would win silently)" $flag $value) }}
{{- end }}
{{- end }}
{{- $known := false }}
{{- range $own }}
{{- if hasPrefix $name . }}
{{- $known = true }}
{{- end }}
{{- end }}
{{- if not $known }}
{{- fail (printf "extraArgs: %s is not a flag of kubefit run (see kubefit run --help); the operator would exit at start" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- /* The Deployment's selector labels are the pod's: podLabels may repeat them but not change them. */}}
{{- range $key, $value := include "kubefit.selectorLabels" . | fromYaml }}
{{- if and (hasKey $.Values.podLabels $key) (ne (toString (get $.Values.podLabels $key)) (toString $value)) }}
{{- fail (printf "podLabels.%s must not be set (or must be %q): the Deployment selects its pods by it" $key (toString $value)) }}
{{- end }}
{{- end }}
{{- /*
An existingSecret named like the Secret the chart writes stops the chart rendering it: `helm upgrade` then
deletes it (it was in the last release) while the Deployment still mounts it.
*/}}
{{- $checkpointKeySecret := include "kubefit.generatedCheckpointKeySecret" . }}
{{- if eq .Values.checkpoint.existingSecret $checkpointKeySecret }}
{{- fail (include "kubefit.ownSecretRefused" (list "checkpoint.existingSecret" $checkpointKeySecret)) }}
{{- end }}
{{- $webhookSecret := include "kubefit.generatedWebhookSecret" . }}
{{- if and .Values.webhook.enabled (eq .Values.webhook.existingSecret $webhookSecret) }}
{{- fail (include "kubefit.ownSecretRefused" (list "webhook.existingSecret" $webhookSecret)) }}
{{- end }}
{{- with .Values.webhook }}
{{- if and .enabled .existingSecret .certManager.enabled }}
{{- fail "webhook.existingSecret and webhook.certManager.enabled exclude each other: cert-manager writes its own Secret" }}
{{- end }}
{{- if and .enabled .existingSecret (not .caBundle) }}
{{- fail "webhook.existingSecret needs webhook.caBundle: the base64-encoded PEM of the CA that signed its tls.crt" }}
{{- end }}
{{- if and .enabled .caBundle (not .existingSecret) }}
{{- fail "webhook.caBundle applies only with webhook.existingSecret (the chart's own and cert-manager's certificates bring their CA)" }}
{{- end }}
{{- if and .enabled .caBundle (not (contains "-----BEGIN CERTIFICATE-----" (b64dec .caBundle))) }}
{{- fail "webhook.caBundle must be base64 of PEM certificates (-----BEGIN CERTIFICATE-----), e.g. `base64 -w0 ca.crt`" }}
{{- end }}
{{- if and .enabled .certManager.enabled (not .certManager.issuerRef.name) }}
{{- fail "webhook.certManager.enabled needs webhook.certManager.issuerRef.name: the Issuer or ClusterIssuer that signs the certificate" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Why an existingSecret (the value's name, then the Secret's) must not be a Secret the chart writes. */}}
{{- define "kubefit.ownSecretRefused" -}}
{{- $value := index . 0 }}
{{- $secret := index . 1 }}
{{- printf "%s must not be %s, the Secret this chart writes itself: Helm deletes it once the chart stops rendering it; copy it under another name (kubectl get secret %s -o yaml, rename, apply) and name that" $value $secret $secret }}
{{- end }}

{{/*
The validating admission webhook: its Service, the Secret with its certificate (webhook.existingSecret, or
the one the chart or cert-manager writes), the cert-manager Certificate, and where the Secret is mounted.
*/}}
{{- define "kubefit.webhookService" -}}
{{- printf "%s-webhook" (include "kubefit.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}
{{- define "kubefit.generatedWebhookSecret" -}}
{{- printf "%s-webhook-tls" (include "kubefit.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}
{{- /* cert-manager's Secret has a name of its own: switching between it and the chart's generated one,
either way, would have helm delete the Secret cert-manager writes, or refuse to take over the one it left. */}}
{{- define "kubefit.webhookSecret" -}}
{{- if .Values.webhook.existingSecret }}
{{- .Values.webhook.existingSecret }}
{{- else if .Values.webhook.certManager.enabled }}
{{- printf "%s-webhook-cm-tls" (include "kubefit.fullname" . | trunc 48 | trimSuffix "-") }}
{{- else }}
{{- include "kubefit.generatedWebhookSecret" . }}
{{- end }}
{{- end }}
{{- define "kubefit.webhookCertificate" -}}
{{- include "kubefit.webhookService" . }}
{{- end }}
{{- define "kubefit.webhookCertDir" -}}/etc/kubefit/webhook{{- end }}

{{/*
A Prometheus duration (1h30m, 90s, 0) in milliseconds, as a string: for comparing two of them.
*/}}
{{- define "kubefit.durationMillis" -}}
{{- $factors := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 "w" 604800000 "y" 31536000000 -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+(ms|[smhdwy])" . -1 -}}
{{- $total = add $total (mul (regexReplaceAll "[a-z]+$" . "" | atoi) (get $factors (regexReplaceAll "^[0-9]+" . ""))) -}}
{{- end -}}
{{- $total -}}
{{- end -}}
