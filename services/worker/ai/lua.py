"""Shared pieces of the limiters' Lua scripts.

Each limiter defines Lua functions; a script is the clock line, the functions it needs
and a body, so admission can check a slot, the breaker and the budgets in one atomic
round trip while each limiter still runs on its own. Times are Redis server
milliseconds, so worker clocks never matter.
"""

from __future__ import annotations

NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""


def script(*parts: str) -> str:
    return NOW + "\n".join(parts)
