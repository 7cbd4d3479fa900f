{{/*
Names and labels. These helpers take a context with .Values (agentmon's values) and .Release, so the
watcher templates can call them with a context built from a parent chart (see _watcher.tpl). They
never use .Chart.Name: inside a parent chart that is the parent's name.
*/}}

{{- define "agentmon.name" -}}
{{- default "agentmon" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentmon.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "agentmon" .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "agentmon.botBridge.fullname" -}}
{{- printf "%s-bot-bridge" (include "agentmon.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* agentmon's appVersion and chart version, also when called from a parent chart's context (whose
.Chart is the parent's). scripts/check-chart checks these constants against Chart.yaml and the Cargo
workspace version. */}}
{{- define "agentmon.appVersion" -}}
{{- if eq .Chart.Name "agentmon" -}}{{ .Chart.AppVersion }}{{- else -}}0.1.0{{- end -}}
{{- end -}}

{{- define "agentmon.chartVersion" -}}
{{- if eq .Chart.Name "agentmon" -}}{{ .Chart.Version }}{{- else -}}0.1.0{{- end -}}
{{- end -}}

{{- define "agentmon.chartLabel" -}}
{{- printf "agentmon-%s" (include "agentmon.chartVersion" .) | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable across upgrades. Argument: (dict "ctx" . "component" "bot-bridge") */}}
{{- define "agentmon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentmon.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels for every resource. Argument: (dict "ctx" . "component" "bot-bridge") */}}
{{- define "agentmon.labels" -}}
{{ include "agentmon.selectorLabels" . }}
app.kubernetes.io/part-of: agentmon
app.kubernetes.io/version: {{ include "agentmon.appVersion" .ctx | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "agentmon.chartLabel" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* image reference. Argument: (dict "ctx" . "image" .Values.botBridge.image) */}}
{{- define "agentmon.image" -}}
{{- $repo := .image.repository -}}
{{- with .ctx.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default .ctx.Values.image.tag | default (include "agentmon.appVersion" .ctx)) -}}
{{- end -}}
{{- end -}}

{{- define "agentmon.imagePullPolicy" -}}
{{- .image.pullPolicy | default .ctx.Values.image.pullPolicy | default "IfNotPresent" -}}
{{- end -}}

{{/* Labels of pod templates: the selector labels and what never changes with a chart upgrade. No
chart or app version here: a label change in a pod template restarts the pods (for bot-bridge, with
Recreate, that is downtime) although nothing they run changed. Argument as agentmon.labels. */}}
{{- define "agentmon.podLabels" -}}
{{ include "agentmon.selectorLabels" . }}
app.kubernetes.io/part-of: agentmon
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A securityContext from values (botBridge.podSecurityContext, botBridge.securityContext,
watcher.securityContext): the restricted Pod Security Standard by default, every key overridable,
and a key set to null is left out (a cluster that assigns its own uids, e.g. OpenShift's
restricted-v2, needs runAsUser, runAsGroup and fsGroup omitted). Argument: the map. */}}
{{- define "agentmon.securityContext" -}}
{{- $out := dict -}}
{{- range $k, $v := . -}}
{{- if not (kindIs "invalid" $v) }}{{- $_ := set $out $k $v -}}{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{- define "agentmon.botBridge.serviceAccountName" -}}
{{- if .Values.botBridge.serviceAccount.create -}}
{{- .Values.botBridge.serviceAccount.name | default (include "agentmon.botBridge.fullname" .) -}}
{{- else -}}
{{- .Values.botBridge.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "agentmon.monitoring.namespace" -}}
{{- .ns | default .ctx.Release.Namespace -}}
{{- end -}}
