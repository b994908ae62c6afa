{{/*
Names, labels and the image reference shared by the chart's templates.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "voicelane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name when it already contains the
chart name, else "<release>-<chart>". Cut to 52 characters so that suffixes such as "-operator" and
"-webhook-tls" keep names within the 63 characters of a DNS label.
*/}}
{{- define "voicelane.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := include "voicelane.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "voicelane.operator.fullname" -}}
{{- printf "%s-operator" (include "voicelane.fullname" .) }}
{{- end }}

{{- define "voicelane.webhook.fullname" -}}
{{- printf "%s-webhook" (include "voicelane.fullname" .) }}
{{- end }}

{{- define "voicelane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "voicelane.labels" -}}
helm.sh/chart: {{ include "voicelane.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: voicelane
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels that select the operator's pods. The name is fixed, not nameOverride: the NetworkPolicy the
operator renders for each lane admits pods labelled app.kubernetes.io/name=voicelane-operator
(operator/render.py, OPERATOR_NAME) to the model servers.
*/}}
{{- define "voicelane.operator.selectorLabels" -}}
app.kubernetes.io/name: voicelane-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "voicelane.operator.labels" -}}
{{ include "voicelane.labels" . }}
app.kubernetes.io/name: voicelane-operator
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of objects of another component: include with (dict "root" $ "component" "<name>"). */}}
{{- define "voicelane.componentLabels" -}}
{{ include "voicelane.labels" .root }}
app.kubernetes.io/name: {{ include "voicelane.name" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of the prometheus-operator objects: the component's, plus `release` when set. */}}
{{- define "voicelane.monitoringLabels" -}}
{{ include "voicelane.componentLabels" . }}
{{- with .root.Values.monitoring.release }}
release: {{ . | quote }}
{{- end }}
{{- end }}

{{- define "voicelane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "voicelane.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository:tag (tag defaults to the appVersion), or repository@digest. */}}
{{- define "voicelane.operator.image" -}}
{{- $image := .Values.operator.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
"true" when the operator pod itself serves the webhook: it is on and not served from outside the cluster
(webhook.url). Empty otherwise, so the result can be used as a condition.
*/}}
{{- define "voicelane.webhook.servedInCluster" -}}
{{- if and .Values.webhook.enabled (not .Values.webhook.url) }}true{{ end }}
{{- end }}

{{/* Where the operator finds the webhook's serving certificate (tls.crt, tls.key). */}}
{{- define "voicelane.webhook.certDir" -}}
/etc/voicelane/webhook-tls
{{- end }}

{{- define "voicelane.webhook.tlsSecretName" -}}
{{- printf "%s-tls" (include "voicelane.webhook.fullname" .) }}
{{- end }}

{{/* The Secret the operator keeps the webhook's CA and certificate in (without cert-manager). */}}
{{- define "voicelane.webhook.caSecretName" -}}
{{- printf "%s-ca" (include "voicelane.webhook.fullname" .) }}
{{- end }}

{{/* "true" when the operator makes and keeps the webhook's certificate and caBundle itself. */}}
{{- define "voicelane.webhook.selfManaged" -}}
{{- if and (include "voicelane.webhook.servedInCluster" .) (not .Values.webhook.certManager.enabled) }}true{{ end }}
{{- end }}

{{/* The webhook's Service port; the operator container serves the webhook on 9443. */}}
{{- define "voicelane.webhook.containerPort" -}}
9443
{{- end }}
