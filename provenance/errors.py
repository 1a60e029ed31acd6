"""The provenance package's exception tree.

Everything the package raises on purpose derives from :class:`ProvenanceError`; the edges
(the CLI, the controller's error handler) translate these into exit codes and HTTP statuses.
Messages are one line and say what to fix.

::

    ProvenanceError
     ├── InvalidInputError          bad arguments, missing or unreadable files, malformed JSON
     ├── KeyMaterialError           a key or certificate that cannot be loaded or does not fit
     ├── ManifestNotFoundError      an ID no store knows
     ├── StorageError               a store that cannot be reached or refuses a write
     │    └── DeliveryError         the sidecar's upload or registration did not succeed
     │         ├── RetryableDeliveryError   try again later (down, timeout, 5xx/429)
     │         └── PermanentDeliveryError   refused for good (4xx other than 408/429)
     ├── TransparencyLogError       a log that cannot append or prove
     │    └── ProofError            a proof that does not verify
     └── VerificationError          something a verifier checked does not hold
          ├── SignatureError        a signature that does not verify
          ├── UntrustedSignerError  a valid signature by a key the trust store does not anchor
          ├── DigestMismatchError   content whose digest differs from the recorded one
          └── LinkError             a cross-reference that does not resolve or whose hash differs
"""

from __future__ import annotations

__all__ = [
    "DeliveryError",
    "DigestMismatchError",
    "InvalidInputError",
    "KeyMaterialError",
    "LinkError",
    "ManifestNotFoundError",
    "PermanentDeliveryError",
    "ProofError",
    "ProvenanceError",
    "RetryableDeliveryError",
    "SignatureError",
    "StorageError",
    "TransparencyLogError",
    "UntrustedSignerError",
    "VerificationError",
]


class ProvenanceError(Exception):
    """Base class of every error the provenance package raises on purpose."""


class InvalidInputError(ProvenanceError):
    """The caller gave something unusable: a missing file, a malformed manifest, bad flags."""


class KeyMaterialError(ProvenanceError):
    """A private key, certificate or trust anchor cannot be loaded or does not fit."""


class ManifestNotFoundError(ProvenanceError):
    """No manifest with the given ID exists in the store asked."""


class StorageError(ProvenanceError):
    """A manifest store could not be reached or refused the operation."""


class DeliveryError(StorageError):
    """A delivery (artifact upload or manifest registration) did not succeed."""


class RetryableDeliveryError(DeliveryError):
    """Try again later: the server is down, timed out, or answered 5xx/429/408."""


class PermanentDeliveryError(DeliveryError):
    """Never try again: the server refused the item itself (4xx other than 408/429)."""


class TransparencyLogError(ProvenanceError):
    """The transparency log could not append an entry or produce a proof."""


class ProofError(TransparencyLogError):
    """An inclusion or consistency proof, or a checkpoint signature, does not verify."""


class VerificationError(ProvenanceError):
    """Something a verifier checked does not hold."""


class SignatureError(VerificationError):
    """A signature does not verify over the bytes it claims to cover."""


class UntrustedSignerError(VerificationError):
    """The signature verifies, but the trust store does not anchor the signing key."""


class DigestMismatchError(VerificationError):
    """Content re-hashed to a digest other than the one recorded."""


class LinkError(VerificationError):
    """A cross-reference names a manifest that is missing or whose hash differs."""
