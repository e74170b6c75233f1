{{/* Names */}}
{{- define "mixroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mixroute.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's object name: <fullname>-<component>, at most 63 characters. */}}
{{- define "mixroute.componentName" -}}
{{- printf "%s-%s" (include "mixroute.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mixroute.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: call with (dict "root" $ "component" "gateway") */}}
{{- define "mixroute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mixroute.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "mixroute.labels" -}}
helm.sh/chart: {{ include "mixroute.chart" .root }}
{{ include "mixroute.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: mixroute
{{- end -}}

{{- define "mixroute.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mixroute.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mixroute.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "mixroute.discoveryNamespace" -}}
{{- .Values.discovery.namespace | default .Release.Namespace -}}
{{- end -}}

{{/*
A mixroute config: the given config with server.host/port (and admin_key) and the
discovery section set by the chart. Call with (dict "root" $ "config" <map> "port" <int>).
*/}}
{{- define "mixroute.config" -}}
{{- $root := .root -}}
{{- $config := deepCopy (.config | default dict) -}}
{{- $server := deepCopy (get $config "server" | default dict) -}}
{{- $_ := set $server "host" "0.0.0.0" -}}
{{- $_ := set $server "port" (int .port) -}}
{{- if $root.Values.adminKeySecret -}}
{{- $_ := set $server "admin_key" "${MIXROUTE_ADMIN_KEY}" -}}
{{- end -}}
{{- $_ := set $config "server" $server -}}
{{- if $root.Values.discovery.enabled -}}
{{- $kubernetes := dict "namespace" (include "mixroute.discoveryNamespace" $root) "label_selector" $root.Values.discovery.labelSelector "port" (int $root.Values.discovery.port) "model_label" $root.Values.discovery.modelLabel -}}
{{- $_ := set $config "discovery" (dict "kubernetes" $kubernetes) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The pod security context every mixroute process runs with. */}}
{{- define "mixroute.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "mixroute.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Environment shared by mixroute processes. */}}
{{- define "mixroute.env" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- if .Values.adminKeySecret }}
- name: MIXROUTE_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.adminKeySecret }}
      key: admin-key
{{- end }}
{{- end -}}

{{/* A model's object-name suffix: its public name made DNS-safe. */}}
{{- define "mixroute.modelSlug" -}}
{{- . | lower | replace "." "-" | replace "_" "-" | replace "/" "-" | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels of the model pool's objects: no part-of=mixroute, since modelPool.labels usually
sets app.kubernetes.io/part-of (that is what discovery selects).
*/}}
{{- define "mixroute.poolLabels" -}}
helm.sh/chart: {{ include "mixroute.chart" . }}
{{ include "mixroute.selectorLabels" (dict "root" . "component" "model-pool") }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
