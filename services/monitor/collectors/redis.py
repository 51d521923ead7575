"""Redis health from INFO and the slow log.

An unreachable Redis is an observation, not a collector failure: it reports
``tgflow_redis_up 0`` so that the RedisDown rule can fire.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.monitor.collectors import Collected, Context
from services.monitor.samples import Sample

_GAUGES = {
    "used_memory": ("tgflow_redis_used_memory_bytes", "Memory Redis uses."),
    "maxmemory": ("tgflow_redis_maxmemory_bytes", "Redis memory limit (0: none)."),
    "connected_clients": ("tgflow_redis_connected_clients", "Clients connected to Redis."),
    "blocked_clients": ("tgflow_redis_blocked_clients", "Clients in a blocking call."),
    "instantaneous_ops_per_sec": ("tgflow_redis_ops_per_second", "Redis commands per second."),
    "keyspace_hits": ("tgflow_redis_keyspace_hits_total", "Lookups that found a key."),
    "keyspace_misses": ("tgflow_redis_keyspace_misses_total", "Lookups that found no key."),
    "evicted_keys": ("tgflow_redis_evicted_keys_total", "Keys evicted for memory."),
    "rejected_connections": ("tgflow_redis_rejected_connections_total", "Refused connections."),
}
# Paths on the Redis host are not the API's business.
_HIDDEN_INFO = frozenset({"executable", "config_file", "os", "process_id", "run_id"})


class RedisCollector:
    name = "redis"
    produces = frozenset(
        {name for name, _ in _GAUGES.values()}
        | {
            "tgflow_redis_up",
            "tgflow_redis_memory_used_ratio",
            "tgflow_redis_hit_ratio",
            "tgflow_redis_slowlog_length",
        }
    )

    def __init__(self) -> None:
        self._last_lookups: tuple[float, float] | None = None

    async def collect(self, ctx: Context) -> Collected:
        try:
            info: dict[str, Any] = await ctx.redis.info()
            slowlog = await ctx.redis.slowlog_get(32)
            slowlog_len = await ctx.redis.slowlog_len()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._last_lookups = None
            error = f"{type(exc).__name__}: {exc}"
            down = Sample("tgflow_redis_up", 0.0, {}, "Redis answered INFO.")
            return Collected([down], {"connected": False, "error": error})
        out = [Sample("tgflow_redis_up", 1.0, {}, "Redis answered INFO.")]
        for key, (name, doc) in _GAUGES.items():
            if key in info:
                out.append(Sample(name, float(info[key]), {}, doc))
        if float(info.get("maxmemory", 0)) > 0:
            ratio = float(info["used_memory"]) / float(info["maxmemory"])
            out.append(Sample("tgflow_redis_memory_used_ratio", ratio, {}, "Share of maxmemory."))
        hit_ratio = self._hit_ratio(
            float(info.get("keyspace_hits", 0)), float(info.get("keyspace_misses", 0))
        )
        if hit_ratio is not None:
            out.append(
                Sample(
                    "tgflow_redis_hit_ratio", hit_ratio, {}, "Hits per lookup since last sample."
                )
            )
        out.append(
            Sample("tgflow_redis_slowlog_length", float(slowlog_len), {}, "Slow log entries.")
        )
        return Collected(
            out,
            {
                "connected": True,
                "info": {k: v for k, v in info.items() if k not in _HIDDEN_INFO},
                "slowlog": [_slow_entry(e) for e in slowlog],
                "slowlog_length": slowlog_len,
            },
        )

    def _hit_ratio(self, hits: float, misses: float) -> float | None:
        """Hit ratio over the last interval; the lifetime ratio would barely move."""
        last, self._last_lookups = self._last_lookups, (hits, misses)
        if last is None or hits < last[0] or misses < last[1]:  # first sample or a restart
            return None
        lookups = (hits - last[0]) + (misses - last[1])
        return (hits - last[0]) / lookups if lookups else None


def _slow_entry(entry: dict[str, Any]) -> dict[str, Any]:
    command = entry.get("command", b"")
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return {
        "id": entry.get("id"),
        "start_time": entry.get("start_time"),
        "duration_us": entry.get("duration"),
        "command": text[:200],
    }
