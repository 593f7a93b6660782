{{- define "irc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "irc.fullname" -}}
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

{{- define "irc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "irc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "irc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "irc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ilert-rollout-controller
{{- end }}

{{- define "irc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "irc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret that holds the integration key, when the chart knows of one. */}}
{{- define "irc.secretName" -}}
{{- if .Values.ilert.existingSecret }}
{{- .Values.ilert.existingSecret }}
{{- else if .Values.ilert.integrationKey }}
{{- printf "%s-key" (include "irc.fullname" .) }}
{{- end }}
{{- end }}
