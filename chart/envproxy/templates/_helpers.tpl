{{/* Common labels of every object. */}}
{{- define "envproxy.labels" -}}
app.kubernetes.io/part-of: envproxy
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "envproxy.agentName" -}}{{ .Release.Name }}-agent{{- end -}}
{{- define "envproxy.webhookName" -}}{{ .Release.Name }}-webhook{{- end -}}
{{- define "envproxy.configName" -}}{{ .Release.Name }}-config{{- end -}}
{{- define "envproxy.tlsSecretName" -}}
{{- if eq (include "envproxy.certificateSource" .) "secret" -}}
{{ .Values.webhook.certificates.secretName }}
{{- else -}}
{{ .Release.Name }}-webhook-tls
{{- end -}}
{{- end -}}

{{- define "envproxy.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The certificate source after resolving "auto". */}}
{{- define "envproxy.certificateSource" -}}
{{- $source := .Values.webhook.certificates.source -}}
{{- if eq $source "auto" -}}
{{- if .Capabilities.APIVersions.Has "cert-manager.io/v1" -}}cert-manager{{- else -}}helm{{- end -}}
{{- else -}}
{{ $source }}
{{- end -}}
{{- end -}}

{{/* Paths inside the containers. */}}
{{- define "envproxy.configDir" -}}/etc/envproxy/config{{- end -}}
{{- define "envproxy.tlsDir" -}}/etc/envproxy/webhook{{- end -}}
{{- define "envproxy.vaultCaDir" -}}/etc/envproxy/vault-ca{{- end -}}

{{/* The admin socket, at the same path on the node and in the agent's container. */}}
{{- define "envproxy.adminSocket" -}}
{{ printf "%s/admin.sock" (trimSuffix "/" .Values.node.adminSocketDir) }}
{{- end -}}

{{/* Checks of value combinations that the schema cannot express. */}}
{{- define "envproxy.checkValues" -}}
{{- $source := include "envproxy.certificateSource" . -}}
{{- if and (eq $source "secret") (or (not .Values.webhook.certificates.secretName) (not .Values.webhook.certificates.caBundle)) -}}
{{- fail "webhook.certificates.source \"secret\" needs webhook.certificates.secretName (a kubernetes.io/tls Secret) and webhook.certificates.caBundle (the base64 PEM of its CA)" -}}
{{- end -}}
{{- $replicas := int .Values.webhook.replicas -}}
{{- $minAvailable := .Values.webhook.minAvailable -}}
{{- if gt $replicas 1 -}}
{{- /* The disruption controller rounds a percentage up to whole pods. */ -}}
{{- $required := 0 -}}
{{- if kindIs "string" $minAvailable -}}
{{- $required = div (add (mul $replicas (int (trimSuffix "%" $minAvailable))) 99) 100 -}}
{{- else -}}
{{- $required = int $minAvailable -}}
{{- end -}}
{{- if ge (int $required) $replicas -}}
{{- fail (printf "webhook.minAvailable (%v, %d of %d replicas) must leave at least one replica that may be evicted, or no node could ever be drained; lower it or raise webhook.replicas" $minAvailable (int $required) $replicas) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.agent.healthPort)) -}}
{{- fail (printf "metrics.port and agent.healthPort are both %d: the agent serves metrics and health checks on separate listeners, so choose two different ports" (int .Values.agent.healthPort)) -}}
{{- end -}}
{{- $socketDir := trimSuffix "/" .Values.node.socketDir -}}
{{- $libraryDir := trimSuffix "/" .Values.node.libraryDir -}}
{{- if eq $socketDir $libraryDir -}}
{{- fail "node.socketDir and node.libraryDir must be different directories" -}}
{{- end -}}
{{- if or (hasPrefix (printf "%s/" $libraryDir) $socketDir) (hasPrefix (printf "%s/" $socketDir) $libraryDir) -}}
{{- fail (printf "node.socketDir (%s) and node.libraryDir (%s) must not contain one another: pods mount both read-only, and the agent writes into each" .Values.node.socketDir .Values.node.libraryDir) -}}
{{- end -}}
{{- $adminDir := trimSuffix "/" .Values.node.adminSocketDir -}}
{{- if or (eq $adminDir $socketDir) (hasPrefix (printf "%s/" $socketDir) $adminDir) -}}
{{- fail (printf "node.adminSocketDir (%s) must lie outside node.socketDir (%s), which every mutated pod mounts" .Values.node.adminSocketDir .Values.node.socketDir) -}}
{{- end -}}
{{- if or (eq $adminDir (trimSuffix "/" .Values.node.libraryDir)) (hasPrefix (printf "%s/" (trimSuffix "/" .Values.node.libraryDir)) $adminDir) -}}
{{- fail (printf "node.adminSocketDir (%s) must lie outside node.libraryDir (%s), which every mutated pod mounts" .Values.node.adminSocketDir .Values.node.libraryDir) -}}
{{- end -}}
{{- end -}}
