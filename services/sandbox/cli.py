"""``tgflow sandbox``: run a local Telegram DC and model endpoint until signalled."""

import argparse
import asyncio
import logging
import signal
import sys

from .server import Sandbox

DEFAULT_PORT = 10443
DEFAULT_ADMIN_PORT = 10480


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tgflow sandbox",
        description="Serve a local MTProto DC for stock Telethon, an admin API and a "
        "deterministic OpenAI-compatible model endpoint.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="MTProto port, 0 picks a free one"
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=DEFAULT_ADMIN_PORT,
        help="admin API and /v1 model port, 0 picks a free one",
    )
    parser.add_argument("--dc-id", type=int, default=2, help="DC id (login code = id x5)")
    parser.add_argument("--public-host", default=None, help="address clients should dial")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    return parser


async def serve(args: argparse.Namespace) -> int:
    """Start the sandbox, print its addresses, and wait for SIGINT/SIGTERM."""
    sandbox = Sandbox(
        args.host, args.port, args.admin_port, dc_id=args.dc_id, public_host=args.public_host
    )
    try:
        await sandbox.start()
    except OSError as exc:
        print(f"sandbox: cannot listen: {exc}", file=sys.stderr)
        await sandbox.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"sandbox mtproto {sandbox.settings.public_host}:{sandbox.mtproto_port}", flush=True)
    print(f"sandbox admin {sandbox.admin_url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await sandbox.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.uvloop:
        import uvloop

        return uvloop.run(serve(args))
    return asyncio.run(serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
