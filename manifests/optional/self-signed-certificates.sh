#!/bin/sh
# Creates the webhook's serving certificate without cert-manager: a CA and a certificate for the
# webhook Service, signed with openssl. Writes into OUTPUT_DIR:
#   webhook-tls-secret.yaml   the Secret envproxy-webhook-tls (tls.crt, tls.key, ca.crt)
#   ca-bundle-patch.json      a JSON patch that sets the caBundle of the three webhooks
# then prints the two kubectl commands that apply them. The CA key is not kept, so a new
# certificate (after 825 days, the validity set here) needs a new CA and a new patch.
#
# Usage: self-signed-certificates.sh OUTPUT_DIR [NAMESPACE] [SERVICE]
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 OUTPUT_DIR [NAMESPACE] [SERVICE]" >&2
    exit 2
fi
output=$1
namespace=${2:-envproxy-system}
service=${3:-envproxy-webhook}
days=825

# The Secret holds the private key, so every file written here is readable by its owner only.
umask 077
mkdir -p "$output"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/ca.key" -out "$work/ca.crt" -days "$days" \
    -subj "/CN=envproxy-webhook-ca" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/tls.key" -out "$work/tls.csr" \
    -subj "/CN=$service.$namespace.svc" 2>/dev/null
printf 'subjectAltName=DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\n' \
    "$service" "$namespace" "$service" "$namespace" >"$work/extensions"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -CAcreateserial -out "$work/tls.crt" -days "$days" -extfile "$work/extensions" 2>/dev/null

encode() { base64 <"$1" | tr -d '\n'; }

# A file left by an earlier run keeps its mode when rewritten, so it is replaced instead.
rm -f "$output/webhook-tls-secret.yaml"
cat >"$output/webhook-tls-secret.yaml" <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: $service-tls
  namespace: $namespace
  labels:
    app.kubernetes.io/part-of: envproxy
type: kubernetes.io/tls
data:
  tls.crt: $(encode "$work/tls.crt")
  tls.key: $(encode "$work/tls.key")
  ca.crt: $(encode "$work/ca.crt")
YAML

bundle=$(encode "$work/ca.crt")
{
    printf '['
    for index in 0 1 2; do
        [ "$index" = 0 ] || printf ','
        printf '{"op":"add","path":"/webhooks/%s/clientConfig/caBundle","value":"%s"}' \
            "$index" "$bundle"
    done
    printf ']\n'
} >"$output/ca-bundle-patch.json"

cat <<TEXT
Wrote $output/webhook-tls-secret.yaml and $output/ca-bundle-patch.json. Apply them with:
  kubectl apply -f $output/webhook-tls-secret.yaml
  kubectl patch mutatingwebhookconfiguration envproxy --type=json --patch-file $output/ca-bundle-patch.json
TEXT
