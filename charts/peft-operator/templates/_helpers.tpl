{{/* The chart name, or nameOverride. */}}
{{- define "peft-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-peft-operator (or the release name when it already says peft-operator), at most 52
characters so that suffixed names (-metrics, -progress-key) stay valid DNS labels. */}}
{{- define "peft-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "peft-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selects the operator pods (Deployment, Services, PDB, NetworkPolicy). */}}
{{- define "peft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "peft-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "peft-operator.labels" -}}
{{ include "peft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: peft-operator
helm.sh/chart: {{ include "peft-operator.chart" . }}
{{- end -}}

{{- define "peft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "peft-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "peft-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "peft-operator.fullname" .) -}}
{{- end -}}

{{- define "peft-operator.progressSecretName" -}}
{{- default (printf "%s-progress-key" (include "peft-operator.fullname" .)) .Values.progress.existingSecret -}}
{{- end -}}

{{/* The URL trainer pods POST progress to: the progress Service. */}}
{{- define "peft-operator.progressURL" -}}
{{- printf "http://%s.%s.svc:%d" (include "peft-operator.fullname" .) .Release.Namespace (int .Values.progress.port) -}}
{{- end -}}

{{/* repository:tag or repository@digest; the tag defaults to the appVersion. */}}
{{- define "peft-operator.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}
