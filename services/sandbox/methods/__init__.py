"""RPC method handlers, one module per TL namespace; importing registers them."""

from . import account, auth, channels, contacts, folders, help, messages, updates, users

__all__ = [
    "account",
    "auth",
    "channels",
    "contacts",
    "folders",
    "help",
    "messages",
    "updates",
    "users",
]
