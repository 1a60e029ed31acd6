"""Atlas-compatible provenance: hashing, signed manifests, C2PA and OMS signatures, transparency log,
verification, the sidecar and the atlas-compatible CLI. Never imports ``controller``."""
