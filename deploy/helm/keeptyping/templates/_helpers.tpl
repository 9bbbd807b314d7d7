{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "keeptyping.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already has it. */}}
{{- define "keeptyping.fullname" -}}
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

{{- define "keeptyping.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keeptyping.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keeptyping.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keeptyping.labels" -}}
helm.sh/chart: {{ include "keeptyping.chart" . }}
{{ include "keeptyping.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keeptyping
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "keeptyping.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keeptyping.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret the pod reads its environment from. */}}
{{- define "keeptyping.secretName" -}}
{{- default (include "keeptyping.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "keeptyping.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* shutdown.grace in whole seconds (the schema allows only "<N>s"). */}}
{{- define "keeptyping.graceSeconds" -}}
{{- .Values.config.shutdown.grace | trimSuffix "s" | int }}
{{- end }}

{{/* state.lease in milliseconds (the schema allows only "<N>ms" and "<N>s"). */}}
{{- define "keeptyping.leaseMillis" -}}
{{- $lease := toString .Values.state.lease }}
{{- if hasSuffix "ms" $lease }}
{{- trimSuffix "ms" $lease | int }}
{{- else }}
{{- mul (trimSuffix "s" $lease | int) 1000 }}
{{- end }}
{{- end }}

{{/*
Seconds a stopping pod may need beyond shutdown.grace to hand its chats to the other replicas:
state.lease rounded up with the redis backend, 0 with memory (nothing to hand over).
*/}}
{{- define "keeptyping.handOverSeconds" -}}
{{- if eq .Values.state.backend "redis" }}
{{- div (add (include "keeptyping.leaseMillis" . | int) 999) 1000 }}
{{- else }}
{{- 0 }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: explicit, or shutdown.grace plus the hand-over plus the margin. */}}
{{- define "keeptyping.terminationGracePeriodSeconds" -}}
{{- $grace := include "keeptyping.graceSeconds" . | int }}
{{- $handOver := include "keeptyping.handOverSeconds" . | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $grace $handOver .Values.terminationGraceMarginSeconds }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/*
Pod affinity: the values' affinity, plus (redis backend, no podAntiAffinity given) a preferred
anti-affinity on the node hostname, so one node's loss takes at most one replica when it can.
*/}}
{{- define "keeptyping.affinity" -}}
{{- $affinity := deepCopy .Values.affinity }}
{{- if and (eq .Values.state.backend "redis") (not (hasKey $affinity "podAntiAffinity")) }}
{{- $term := dict "labelSelector" (dict "matchLabels" (include "keeptyping.selectorLabels" . | fromYaml)) "topologyKey" "kubernetes.io/hostname" }}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) }}
{{- end }}
{{- if $affinity }}
{{- toYaml $affinity }}
{{- end }}
{{- end }}

{{/* Whether the chart must generate a hook token (no token configured anywhere). */}}
{{- define "keeptyping.generateHookToken" -}}
{{- if and (not .Values.secret.existingSecret) (not .Values.secret.hookToken) (not .Values.config.hooks.tokens) (not .Values.config.hooks.allow_unauthenticated) }}true{{ end }}
{{- end }}

{{/*
Refuses values that would render a broken or harmful deployment. Called from every manifest
that matters, so that `helm template` and `helm install` both stop with the message.
*/}}
{{- define "keeptyping.validate" -}}
{{- $replicas := int .Values.replicaCount }}
{{- $redis := eq .Values.state.backend "redis" }}
{{- if and (gt $replicas 1) (eq .Values.state.backend "memory") }}
{{- fail (printf "replicaCount: %d is refused while state.backend is \"memory\": every replica keeps its own sessions and its own copy of each API key's rate budget, so a second replica would double the typing rate against OnlyFansAPI and a stop that lands on another replica than its start would leave that chat typing until its lease runs out. Keep replicaCount: 1 (one replica keeps far more fans typing than one API key allows), or set state.backend: \"redis\" with state.redisUrlSecret to share sessions and budgets between replicas (docs/scale-out.md)." $replicas) }}
{{- end }}
{{- if and $redis (not (and .Values.state.redisUrlSecret.name .Values.state.redisUrlSecret.key)) }}
{{- fail "state.backend is \"redis\" but state.redisUrlSecret does not name a Secret and a key: the chart installs neither Redis nor that Secret. Create one holding the URL of your Redis or Valkey (kubectl create secret generic keeptyping-redis --from-literal=redis-url='redis://:PASSWORD@HOST:6379/0') and set state.redisUrlSecret.name: keeptyping-redis, state.redisUrlSecret.key: redis-url (docs/scale-out.md)." }}
{{- end }}
{{- $leaseMs := include "keeptyping.leaseMillis" . | int }}
{{- if or (lt $leaseMs 500) (gt $leaseMs 60000) }}
{{- fail (printf "state.lease: %s is refused: it must be between 500ms and 60s" (toString .Values.state.lease)) }}
{{- end }}
{{- $grace := include "keeptyping.graceSeconds" . | int }}
{{- $handOver := include "keeptyping.handOverSeconds" . | int }}
{{- $tgps := include "keeptyping.terminationGracePeriodSeconds" . | int }}
{{- if and $redis (le $tgps (add $grace $handOver)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above config.shutdown.grace plus state.lease (%ds + %ds) with state.backend \"redis\", or Kubernetes kills the pod before it has handed its chats to the other replicas" $tgps $grace $handOver) }}
{{- end }}
{{- if le $tgps $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above config.shutdown.grace (%ds), or Kubernetes kills the pod before its drain ends" $tgps $grace) }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) }}
{{- fail "ingress.enabled is true but ingress.hosts is empty" }}
{{- end }}
{{- end }}

{{/* A TOML basic string: JSON string escapes are valid TOML escapes. */}}
{{- define "keeptyping.tomlString" -}}
{{- toJson (toString .) }}
{{- end }}

{{/* A TOML array of strings. */}}
{{- define "keeptyping.tomlStrings" -}}
[{{- range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "keeptyping.tomlString" $v }}{{ end }}]
{{- end }}
