{{/* The port the server listens on inside the container (VLMSERVE_PORT). */}}
{{- define "vlmserve.port" -}}8000{{- end }}

{{- define "vlmserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, shortened to leave room for a model suffix within 63 characters. */}}
{{- define "vlmserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 32 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 32 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 32 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vlmserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vlmserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vlmserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vlmserve.labels" -}}
helm.sh/chart: {{ include "vlmserve.chart" . }}
{{ include "vlmserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Objects of one model. Called with (dict "root" $ "m" $model). */}}
{{- define "vlmserve.modelFullname" -}}
{{- printf "%s-%s" (include "vlmserve.fullname" .root) .m.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vlmserve.modelSelectorLabels" -}}
{{ include "vlmserve.selectorLabels" .root }}
vlmserve/model: {{ .m.name }}
{{- end }}

{{- define "vlmserve.modelLabels" -}}
{{ include "vlmserve.labels" .root }}
vlmserve/model: {{ .m.name }}
{{- end }}

{{- define "vlmserve.servedModelName" -}}
{{- default .m.model .m.servedModelName }}
{{- end }}

{{/* GPUs a pod of this model requests: the tensor-parallel size, none on the CPU engine. */}}
{{- define "vlmserve.gpuCount" -}}
{{- if eq (default "auto" .m.engine) "transformers" }}0{{ else }}{{ int (default 1 .m.tensorParallelSize) }}{{ end }}
{{- end }}

{{/*
This model's autoscaling values: the global block with the model's own keys set over it. A plain
loop rather than mergeOverwrite, which would not let a model set enabled: false over a global true.
Returns YAML; read it back with fromYaml.
*/}}
{{- define "vlmserve.autoscaling" -}}
{{- $as := deepCopy .root.Values.autoscaling }}
{{- range $k, $v := (default dict .m.autoscaling) }}
{{- $_ := set $as $k $v }}
{{- end }}
{{- toYaml $as }}
{{- end }}

{{/*
An environment variable's value as text. Helm reads every number in values as a float, and
printing 20000000 gives "2e+07", which the server cannot parse as an int; JSON keeps "20000000".
*/}}
{{- define "vlmserve.envValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "vlmserve.secretName" -}}
{{- default (printf "%s-auth" (include "vlmserve.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* Whether pods read from a Secret at all: an existing one, or one the chart creates. */}}
{{- define "vlmserve.hasSecret" -}}
{{- if or .Values.auth.existingSecret .Values.auth.apiKeys .Values.auth.hfToken }}true{{ end }}
{{- end }}

{{- define "vlmserve.claimName" -}}
{{- default (printf "%s-cache" (include "vlmserve.fullname" .)) .Values.cache.existingClaim }}
{{- end }}

{{/* The in-chart Redis' Service name. */}}
{{- define "vlmserve.redisName" -}}
{{- printf "%s-redis" (include "vlmserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The router's object names. */}}
{{- define "vlmserve.routerName" -}}
{{- printf "%s-router" (include "vlmserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
VLMSERVE_REDIS_URL for the model and router pods: the in-chart Redis, or an existing one whose URL
(it may hold a password) is read from a Secret. Called with the root context; nothing when neither.
*/}}
{{- define "vlmserve.redisEnv" -}}
{{- if .Values.redis.enabled }}
- name: VLMSERVE_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "vlmserve.redisName" .) | quote }}
{{- else if .Values.redis.existingSecret }}
- name: VLMSERVE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- end }}
{{- end }}
