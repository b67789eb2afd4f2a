{{/* Names and labels shared by every template. */}}

{{- define "plumbline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release-qualified name. A release called "plumbline" is not doubled to "plumbline-plumbline".
*/}}
{{- define "plumbline.fullname" -}}
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

{{- define "plumbline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "plumbline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "plumbline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "plumbline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: plumbline
{{- end }}

{{- define "plumbline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "plumbline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "plumbline.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Leader election is on whenever more than one replica runs, or when asked for. */}}
{{/* Always: Recreate does not cover a node failure or a drain (the old pod may still run,
     unreachable, while the new one starts), so even one replica takes the Lease. */}}
{{- define "plumbline.leaderElection" -}}
true
{{- end }}

{{/* policy/v1 where served (Kubernetes 1.21+), else policy/v1beta1. */}}
{{- define "plumbline.pdbApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1" }}policy/v1{{ else }}policy/v1beta1{{ end }}
{{- end }}

{{- define "plumbline.leaseName" -}}
{{- default (printf "%s-leader" (include "plumbline.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The Secret a provider's credentials live in: an existing one, or the one the chart makes. */}}
{{- define "plumbline.providerSecretName" -}}
{{- $p := .provider }}
{{- if $p.credentials.existingSecret }}
{{- $p.credentials.existingSecret }}
{{- else }}
{{- printf "%s-%s-credentials" (include "plumbline.fullname" .root) $p.name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Every Secret the operator may read, one per line: provider credentials plus rbac.extraSecretNames.
RBAC grants `get` on exactly these names and nothing else.
*/}}
{{- define "plumbline.secretNames" -}}
{{- $root := . }}
{{- range .Values.providers }}
{{- if and .vsphere .credentials }}
{{ include "plumbline.providerSecretName" (dict "provider" . "root" $root) }}
{{- end }}
{{- end }}
{{- range .Values.rbac.extraSecretNames }}
{{ . }}
{{- end }}
{{- end }}
