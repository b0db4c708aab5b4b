//! Vault/OpenBao client: auth, token renewal, transit signing (owned by the vault work).
