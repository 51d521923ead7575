"""Server-side key material and number helpers for the sandbox DC."""

import hashlib
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa
from telethon.crypto import rsa as tl_rsa
from telethon.tl.tlobject import TLObject

KEYS_DIR = Path(__file__).parent / "keys"
PRIVATE_KEY_PATH = KEYS_DIR / "sandbox_rsa.pem"
PUBLIC_KEY_PATH = KEYS_DIR / "sandbox_rsa.pub.pem"

# The 2048-bit safe prime published in the MTProto specification. Clients
# recognise it without a slow primality check (telethon.password does too).
DH_PRIME = int(
    "c71caeb9c6b1c9048e6c522f70f13f73980d40238e3e21c14934d037563d930f"
    "48198a0aa7c14058229493d22530f4dbfa336f6e0ac925139543aed44cce7c37"
    "20fd51f69458705ac68cd4fe6b6b13abdc9746512969328454f18faf8c595f64"
    "2477fe96bb2a941d5bcd1d4ac8cc49880708fa9b378e3c4f3a9060bee67cf9a4"
    "a4a695811051907e162753b56b0f6b410dba74d8a84b2a14b3144e0ef1284754"
    "fd17ed950d5965b4b9dd46582db1178d169c6bc465b0d6ff9ca3928fef5b9ae4"
    "e418fc15e83ebea0f87fa9ff5eed70050ded2849f47bf959d956850ce929851f"
    "0d8115f635b105ee2e4e15d04b2454bf6f4fadf034b10403119cd8e3b92fcc5b",
    16,
)
DH_G = 3
DH_SAFETY = 2 ** (2048 - 64)

_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


@dataclass(frozen=True)
class ServerRsaKey:
    """The sandbox's RSA key pair, with the parts needed for raw decryption."""

    n: int
    e: int
    d: int
    p: int
    q: int
    dmp1: int
    dmq1: int
    iqmp: int
    public_pem: str
    fingerprint: int

    def decrypt_raw(self, block: bytes) -> int:
        """Textbook RSA decryption (CRT), as MTProto's key exchange uses it."""
        c = int.from_bytes(block, "big")
        if c >= self.n:
            raise ValueError("ciphertext out of range")
        m1 = pow(c, self.dmp1, self.p)
        m2 = pow(c, self.dmq1, self.q)
        h = (self.iqmp * (m1 - m2)) % self.p
        return m2 + h * self.q


def sha1(data: bytes) -> bytes:
    """SHA-1 where MTProto's key exchange mandates it (integrity, not secrecy)."""
    return hashlib.sha1(data, usedforsecurity=False).digest()


def key_fingerprint(n: int, e: int) -> int:
    """Fingerprint of an RSA public key computed the way MTProto defines it."""
    data = TLObject.serialize_bytes(tl_rsa.get_byte_array(n)) + TLObject.serialize_bytes(
        tl_rsa.get_byte_array(e)
    )
    value: int = struct.unpack("<q", sha1(data)[-8:])[0]
    return value


def load_server_key(
    private_path: Path = PRIVATE_KEY_PATH, public_path: Path = PUBLIC_KEY_PATH
) -> ServerRsaKey:
    """Read the shipped key pair from disk (blocking: call it off the loop)."""
    private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    if not isinstance(private, crypto_rsa.RSAPrivateKey):
        raise TypeError("sandbox key is not an RSA key")
    nums = private.private_numbers()
    pub = nums.public_numbers
    return ServerRsaKey(
        n=pub.n,
        e=pub.e,
        d=nums.d,
        p=nums.p,
        q=nums.q,
        dmp1=nums.dmp1,
        dmq1=nums.dmq1,
        iqmp=nums.iqmp,
        public_pem=public_path.read_text(encoding="ascii"),
        fingerprint=key_fingerprint(pub.n, pub.e),
    )


def is_probable_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (plenty for pq factors)."""
    if n < 2:
        return False
    for base in _MR_BASES:
        if n % base == 0:
            return n == base
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for base in _MR_BASES:
        x = pow(base, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def random_prime(bits: int) -> int:
    """A random prime with exactly ``bits`` bits."""
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        if is_probable_prime(candidate):
            return candidate


def make_pq() -> tuple[int, int]:
    """Two distinct primes p < q whose product fits a signed 64-bit integer.

    The client reads pq as a signed long, so the product must stay below 2**63.
    """
    while True:
        p, q = sorted((random_prime(31), random_prime(31)))
        if p != q and p * q < 2**63:
            return p, q


def dh_exponent() -> tuple[int, int]:
    """A private exponent and its public value g^a inside the safe range."""
    while True:
        a = secrets.randbits(2048)
        g_a = pow(DH_G, a, DH_PRIME)
        if DH_SAFETY <= g_a <= DH_PRIME - DH_SAFETY:
            return a, g_a
