"""SHA-256 without OpenSSL: `hashlib` loads libcrypto (~3.7 MiB of the daemon's RSS)
for one short digest per rule key. CPython's own builtin module gives the same digest:
`_sha256` up to 3.11, `_sha2` from 3.12; hashlib stays the fallback for a Python
built without them."""

from __future__ import annotations

try:
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        from hashlib import sha256  # type: ignore[assignment,unused-ignore]

__all__ = ["sha256"]
