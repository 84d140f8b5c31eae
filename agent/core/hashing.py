"""SHA-256 and SHA-1 without OpenSSL: `hashlib` loads libcrypto (~3.7 MiB of the
daemon's RSS) for a few short digests (rule keys, finding ids, certificate checks).
CPython's own builtin modules give the same digests: `_sha256` up to 3.11, `_sha2` from
3.12, `_sha1`; hashlib stays the fallback for a Python built without them."""

from __future__ import annotations

try:
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment,unused-ignore]

try:
    from _sha1 import sha1  # type: ignore[import-not-found]
except ImportError:
    from hashlib import sha1  # type: ignore[assignment,unused-ignore]

__all__ = ["sha1", "sha256"]
