# Vault/OpenBao policy `meshpass-signer` for the exchange service: sign with the transit
# key, read its public versions (for the JWKS), and the two key-maintenance calls of the
# management API and the [keys] schedule (rotate; only min_decryption_version through
# config, which retires old versions) - on this key only: no export, no deletion, no
# other key,
# no other engine. An operator who rotates with bao only may drop the last two paths
# (then `POST /api/v1/keys/rotate` and `/retire` answer 503 + Retry-After and log that
# Vault refused them: the policy lacks the path).
#   bao policy write meshpass-signer istio/vault/meshpass-signer.hcl
path "transit/keys/meshpass-participant" {
  capabilities = ["read"]
}

path "transit/sign/meshpass-participant" {
  capabilities = ["update"]
}

path "transit/keys/meshpass-participant/rotate" {
  capabilities = ["update"]
}

# Only the retirement setting: not deletion_allowed, exportable or anything else.
path "transit/keys/meshpass-participant/config" {
  capabilities = ["update"]
  allowed_parameters = {
    "min_decryption_version" = []
  }
}
