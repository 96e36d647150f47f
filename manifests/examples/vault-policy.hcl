# Vault policy "shop-web": what the pods of service account shop/web may read.
# Write it with: vault policy write shop-web vault-policy.hcl
path "secret/data/shop/config" {
  capabilities = ["read"]
}
