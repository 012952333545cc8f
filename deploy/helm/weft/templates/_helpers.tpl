{{/* Common labels. */}}
{{- define "weft.labels" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component. */}}
{{- define "weft.selector" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "weft.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The container security context of the non-root roles. */}}
{{- define "weft.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "weft.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ . }}}
  periodSeconds: 10
  failureThreshold: 90
livenessProbe:
  httpGet: {path: /healthz, port: {{ . }}}
  periodSeconds: 20
readinessProbe:
  httpGet: {path: /readyz, port: {{ . }}}
  periodSeconds: 10
{{- end -}}

{{- define "weft.storage" -}}
{{- if .Values.objectStorage.enabled }}
storage:
  url: {{ .Values.objectStorage.url | quote }}
  sync_interval: 5s
{{- end }}
{{- end -}}
