"""AES-256-IGE for the server's hot path: OpenSSL, with buffers passed in bulk.

telethon.crypto.AES calls the same OpenSSL routine but converts every byte
through ctypes one at a time, which on the server costs more than the cipher
itself (about 35 us for a 160-byte message). This binding hands OpenSSL the
bytes directly. When libcrypto or its AES API is missing it falls back to
telethon.crypto.AES, so the result is always the client's own cipher.
"""

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

from telethon.crypto import AES as TelethonAES

_ENCRYPT, _DECRYPT = 1, 0

Cipher = Callable[[bytes, bytes, bytes], bytes]


class _AesKey(ctypes.Structure):
    # OpenSSL's AES_KEY: 4 * (AES_MAXNR + 1) round-key words and the round count.
    _fields_ = (("rd_key", ctypes.c_uint32 * 60), ("rounds", ctypes.c_int))


@functools.cache
def _openssl() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("crypto")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.AES_set_encrypt_key.argtypes = (ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p)
        lib.AES_set_decrypt_key.argtypes = (ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p)
        lib.AES_ige_encrypt.argtypes = (
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        )
    except (OSError, AttributeError):
        return None
    return lib


def _ige(data: bytes, key: bytes, iv: bytes, mode: int) -> bytes:
    lib = _openssl()
    if lib is None or len(data) % 16 or len(key) != 32 or len(iv) != 32:
        fallback = TelethonAES.encrypt_ige if mode == _ENCRYPT else TelethonAES.decrypt_ige
        result: bytes = fallback(data, key, iv)
        return result
    schedule = _AesKey()
    setter = lib.AES_set_encrypt_key if mode == _ENCRYPT else lib.AES_set_decrypt_key
    setter(key, 256, ctypes.byref(schedule))
    out = ctypes.create_string_buffer(len(data))
    iv_buf = ctypes.create_string_buffer(iv, 32)  # OpenSSL updates the IV in place
    lib.AES_ige_encrypt(data, out, len(data), ctypes.byref(schedule), iv_buf, mode)
    return out.raw


def encrypt_ige(data: bytes, key: bytes, iv: bytes) -> bytes:
    """AES-256-IGE encrypt (data already padded to 16 bytes)."""
    return _ige(data, key, iv, _ENCRYPT)


def decrypt_ige(data: bytes, key: bytes, iv: bytes) -> bytes:
    """AES-256-IGE decrypt."""
    return _ige(data, key, iv, _DECRYPT)
