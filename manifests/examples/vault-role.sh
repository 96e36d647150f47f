#!/bin/sh
# Sets up Vault for the example in app.yaml: Kubernetes auth at auth/kubernetes, and the role
# "web" that service account shop/web logs in with. Run with VAULT_ADDR and VAULT_TOKEN of an
# operator who may write auth and policies.
set -eu

# Kubernetes auth once per cluster. Vault checks each pod's token with the TokenReview API; with
# Vault outside the cluster, also set kubernetes_ca_cert and a token_reviewer_jwt.
vault auth enable kubernetes 2>/dev/null || true
vault write auth/kubernetes/config kubernetes_host="https://kubernetes.default.svc:443"

vault policy write shop-web "$(dirname "$0")/vault-policy.hcl"

# The audience must match [node] token_audience (the chart's tokens.audience), because the
# webhook requests the projected token with that audience.
vault write auth/kubernetes/role/web \
    bound_service_account_names=web \
    bound_service_account_namespaces=shop \
    audience=vault \
    token_policies=shop-web \
    token_ttl=1h
