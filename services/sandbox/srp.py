"""Server half of Telegram's 2FA SRP check.

The client computes its proof with telethon.password; the hashing helpers
are reused here so both sides agree byte for byte.
"""

import hmac
import os
import secrets
from typing import Any

from telethon import password as tl_password
from telethon.tl import types

from .crypto import DH_G, DH_PRIME
from .keys import SrpChallenge
from .state import Password

_P_BYTES = DH_PRIME.to_bytes(256, "big")


def algo_tl(salt1: bytes, salt2: bytes) -> Any:
    return types.PasswordKdfAlgoSHA256SHA256PBKDF2HMACSHA512iter100000SHA256ModPow(
        salt1=salt1, salt2=salt2, g=DH_G, p=_P_BYTES
    )


def make_password(password: str, hint: str = "") -> Password:
    """Derive the SRP verifier (100k PBKDF2 rounds: run it in a thread)."""
    salt1, salt2 = os.urandom(40), os.urandom(16)
    x = int.from_bytes(tl_password.compute_hash(algo_tl(salt1, salt2), password), "big")
    return Password(salt1=salt1, salt2=salt2, verifier=pow(DH_G, x, DH_PRIME), hint=hint)


def _k() -> int:
    digest = tl_password.sha256(
        tl_password.num_bytes_for_hash(_P_BYTES), tl_password.big_num_for_hash(DH_G)
    )
    return int.from_bytes(digest, "big")


def challenge(pw: Password) -> SrpChallenge:
    """A fresh server value B = k*v + g^b for one login attempt."""
    while True:
        b = secrets.randbits(2048)
        g_b = pow(DH_G, b, DH_PRIME)
        if tl_password.is_good_mod_exp_first(g_b, DH_PRIME):
            big_b = (_k() * pw.verifier + g_b) % DH_PRIME
            if tl_password.is_good_large(big_b, DH_PRIME):
                return SrpChallenge(
                    srp_id=secrets.randbits(63), b=b, srp_b=big_b.to_bytes(256, "big")
                )


def password_tl(pw: Password | None, srp: SrpChallenge | None) -> Any:
    """account.Password as Telegram returns it, with or without a password."""
    new_algo = algo_tl(os.urandom(8), os.urandom(16))
    secure = types.SecurePasswordKdfAlgoPBKDF2HMACSHA512iter100000(salt=os.urandom(8))
    if pw is None or srp is None:
        return types.account.Password(
            new_algo=new_algo, new_secure_algo=secure, secure_random=os.urandom(32)
        )
    return types.account.Password(
        new_algo=new_algo,
        new_secure_algo=secure,
        secure_random=os.urandom(32),
        has_password=True,
        current_algo=algo_tl(pw.salt1, pw.salt2),
        srp_B=srp.srp_b,
        srp_id=srp.srp_id,
        hint=pw.hint or None,
    )


def verify(pw: Password, srp: SrpChallenge, a_bytes: bytes, m1: bytes) -> bool:
    """Check the client's proof M1 for its public value A."""
    a_value = int.from_bytes(a_bytes, "big")
    if not tl_password.is_good_mod_exp_first(a_value, DH_PRIME):
        return False
    a_hash = tl_password.big_num_for_hash(a_value)
    b_hash = tl_password.num_bytes_for_hash(srp.srp_b)
    u = int.from_bytes(tl_password.sha256(a_hash, b_hash), "big")
    if u == 0:
        return False
    base = a_value * pow(pw.verifier, u, DH_PRIME) % DH_PRIME
    secret = pow(base, srp.b, DH_PRIME)
    k_hash = tl_password.sha256(tl_password.big_num_for_hash(secret))
    p_hash = tl_password.num_bytes_for_hash(_P_BYTES)
    g_hash = tl_password.big_num_for_hash(DH_G)
    expected = tl_password.sha256(
        tl_password.xor(tl_password.sha256(p_hash), tl_password.sha256(g_hash)),
        tl_password.sha256(pw.salt1),
        tl_password.sha256(pw.salt2),
        a_hash,
        b_hash,
        k_hash,
    )
    return hmac.compare_digest(expected, m1)
