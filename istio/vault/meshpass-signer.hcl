# Vault/OpenBao policy `meshpass-signer` for the exchange service: sign with the transit
# key and read its public versions (for the JWKS), nothing else: no export, no rotate, no
# other key, no other engine. Rotation is an operator's act
# (`bao write -f transit/keys/meshpass-participant/rotate`).
#   bao policy write meshpass-signer istio/vault/meshpass-signer.hcl
path "transit/keys/meshpass-participant" {
  capabilities = ["read"]
}

path "transit/sign/meshpass-participant" {
  capabilities = ["update"]
}
