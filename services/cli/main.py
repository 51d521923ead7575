"""The ``tgflow`` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from shared.config import GatewaySettings, MonitorSettings, WorkerSettings


def _gateway(args: argparse.Namespace) -> int:
    from services.gateway.main import run

    overrides = {k: v for k, v in (("gateway_host", args.host), ("gateway_port", args.port)) if v}
    run(GatewaySettings(**overrides))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from services.worker.main import run

    overrides: dict[str, object] = {}
    if args.concurrency:
        overrides["worker_concurrency"] = args.concurrency
    if args.queues:
        overrides["worker_queues"] = args.queues
    run(WorkerSettings(**overrides))  # type: ignore[arg-type]
    return 0


def _monitor(args: argparse.Namespace) -> int:
    if args.monitor_command == "check-rules":
        from services.monitor.cli import check_rules

        return check_rules(args.files)
    from services.monitor.main import run

    overrides = {k: v for k, v in (("monitor_host", args.host), ("monitor_port", args.port)) if v}
    run(MonitorSettings(**overrides))
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from shared.config import BaseAppSettings
    from shared.db import migrate

    applied = asyncio.run(migrate(BaseAppSettings().database_url))
    print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from shared.auth import mint_token
    from shared.config import BaseAppSettings

    settings = BaseAppSettings()
    settings.ensure_safe()
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    try:
        token = mint_token(
            settings.secret_key.get_secret_value(),
            args.tenant,
            scopes=scopes,
            ttl_seconds=args.ttl,
            subject=args.subject,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _webhook_key(args: argparse.Namespace) -> int:
    from shared.config import BaseAppSettings

    settings = BaseAppSettings()
    settings.ensure_safe()
    print(settings.webhook_signing_key(args.tenant))
    return 0


def _up(args: argparse.Namespace) -> int:
    from services.cli.up import up

    return up(workers=args.workers)


def _keys(action: str, args: argparse.Namespace) -> int:
    from services.cli import keys

    return keys.run_generate(args.key_id) if action == "generate" else keys.run_rotate()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the whole system on embedded defaults")
    p.add_argument("--workers", type=int, default=1, help="worker processes to start")
    p.set_defaults(fn=_up)

    p = sub.add_parser("gateway", help="serve the HTTP API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(fn=_gateway)

    p = sub.add_parser("worker", help="run jobs")
    p.add_argument("--concurrency", type=int, help="jobs at once per queue")
    p.add_argument("--queues", help="comma-separated: control,ai,telegram")
    p.set_defaults(fn=_worker)

    p = sub.add_parser("monitor", help="collect metrics, evaluate alert rules, notify")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(fn=_monitor)
    monitor = p.add_subparsers(dest="monitor_command")
    check = monitor.add_parser("check-rules", help="validate rule files and run their tests")
    check.add_argument("files", nargs="+", metavar="FILE")

    p = sub.add_parser("migrate", help="apply database migrations")
    p.set_defaults(fn=_migrate)

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="action", required=True)
    p = token.add_parser("create", help="mint a bearer token for a tenant")
    p.add_argument("--tenant", required=True)
    p.add_argument("--scopes", default="jobs:read,jobs:write")
    p.add_argument("--ttl", type=int, default=30 * 86_400, help="lifetime in seconds")
    p.add_argument("--subject", default="cli")
    p.set_defaults(fn=_token_create)

    p = sub.add_parser("webhook-key", help="print the key a tenant's webhooks are signed with")
    p.add_argument("--tenant", required=True)
    p.set_defaults(fn=_webhook_key)

    keys = sub.add_parser("keys", help="vault keys for sessions").add_subparsers(
        dest="action", required=True
    )
    p = keys.add_parser("generate", help="print a new TGFLOW_VAULT_KEYS entry")
    p.add_argument("--id", dest="key_id", help="key id (default: random)")
    p.set_defaults(fn=lambda a: _keys("generate", a))
    p = keys.add_parser("rotate", help="re-wrap every session under the first key")
    p.set_defaults(fn=lambda a: _keys("rotate", a))

    sub.add_parser("sandbox", help="serve the local Telegram DC and model endpoint")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sandbox"]:  # the sandbox parses its own options
        from services.sandbox.cli import (  # type: ignore[import-not-found,unused-ignore]
            main as sandbox_main,
        )

        return int(sandbox_main(argv[1:]))
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
