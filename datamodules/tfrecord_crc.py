"""CRC-32C (Castagnoli) and TFRecord's masked form of it.

TFRecord stores `masked_crc(x)` rather than the plain CRC so that a CRC computed over data
that itself contains CRCs does not degenerate. `google-crc32c` (C) is used when installed;
the table-driven Python version is the fallback and the reference in the tests.
"""

from __future__ import annotations

_POLY = 0x82F63B78  # Castagnoli, reflected
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c_python(data: bytes) -> int:
    """Table-driven CRC-32C; the fallback when `google-crc32c` is not installed (slow)."""
    crc, table = 0xFFFFFFFF, _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:
    from google_crc32c import value as _crc32c_c
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c_c = None


def crc32c(data: bytes) -> int:
    return _crc32c_c(bytes(data)) if _crc32c_c is not None else crc32c_python(data)


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
