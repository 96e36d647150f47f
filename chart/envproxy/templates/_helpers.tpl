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
{{- if and (gt (int .Values.webhook.replicas) 1) (ge (int .Values.webhook.minAvailable) (int .Values.webhook.replicas)) -}}
{{- fail (printf "webhook.minAvailable (%d) must be lower than webhook.replicas (%d), or no node could ever be drained" (int .Values.webhook.minAvailable) (int .Values.webhook.replicas)) -}}
{{- end -}}
{{- if eq .Values.node.socketDir .Values.node.libraryDir -}}
{{- fail "node.socketDir and node.libraryDir must be different directories" -}}
{{- end -}}
{{- $socketDir := trimSuffix "/" .Values.node.socketDir -}}
{{- $adminDir := trimSuffix "/" .Values.node.adminSocketDir -}}
{{- if or (eq $adminDir $socketDir) (hasPrefix (printf "%s/" $socketDir) $adminDir) -}}
{{- fail (printf "node.adminSocketDir (%s) must lie outside node.socketDir (%s), which every mutated pod mounts" .Values.node.adminSocketDir .Values.node.socketDir) -}}
{{- end -}}
{{- if or (eq $adminDir (trimSuffix "/" .Values.node.libraryDir)) (hasPrefix (printf "%s/" (trimSuffix "/" .Values.node.libraryDir)) $adminDir) -}}
{{- fail (printf "node.adminSocketDir (%s) must lie outside node.libraryDir (%s), which every mutated pod mounts" .Values.node.adminSocketDir .Values.node.libraryDir) -}}
{{- end -}}
{{- end -}}
