"""The ``lead-bot`` command. Every command exits non-zero with a one-line error on bad input or unreachable
services; tracebacks are for bugs only."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from ghl_real_estate_ai import __version__
from ghl_real_estate_ai.errors import LeadBotError

log = logging.getLogger("lead_bot")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lead-bot", description="The 3-7-30 Lead Bot for GoHighLevel.")
    parser.add_argument("--version", action="version", version=f"lead-bot {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="run simulated leads through 90 virtual days (no setup needed)")
    demo.add_argument("--days", type=int, default=90, help="virtual days to simulate (default 90)")
    demo.add_argument(
        "--store",
        choices=("embedded", "memory"),
        default="embedded",
        help="checkpoint store: an embedded Redis (default) or in-memory",
    )

    simulate = commands.add_parser(
        "simulate",
        help="simulate a quarter of leads through the bot and audit every send (exits 1 on any violation)",
    )
    simulate.add_argument("--leads", type=int, default=500, help="leads to simulate (default 500)")
    simulate.add_argument("--days", type=int, default=90, help="virtual days (default 90)")
    simulate.add_argument("--seed", type=int, default=1, help="random seed of the world (default 1)")
    simulate.add_argument("--json", metavar="OUT", default=None, help="also write the report as JSON to OUT")

    serve = commands.add_parser("serve", help="run the webhook API, intake worker and scheduler")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--role", choices=["all", "web", "worker", "scheduler"], default="all",
        help="which parts this process runs: the routes (web), the intake worker (worker), the scheduler "
        "lease (scheduler), or all three (default)",
    )

    for name, text in (
        ("enroll", "start the sequence for a contact"),
        ("status", "print a lead's sequence state, next step and timeline"),
        ("pause", "pause a lead's sequence"),
        ("resume", "resume a paused lead"),
        ("cancel", "cancel a lead's sequence"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("contact_id", help="the GHL contact id")
        if name == "status":
            command.add_argument("--json", action="store_true", help="print JSON")
        else:
            command.add_argument("--reason", default=None, help="why (kept in the timeline)")
            command.add_argument(
                "--no-wait",
                action="store_true",
                help="queue the action and return without waiting for the service",
            )
    commands.add_parser("reconcile", help="repair scheduler jobs from the leads' states")
    from ghl_real_estate_ai import comps_cli

    comps_cli.add_parsers(commands)
    dead = commands.add_parser("dead-letters", help="list (or retry) webhook events that failed 5 times")
    dead.add_argument("--retry", nargs="*", metavar="ID", help="requeue these entries (all when none given)")
    return parser


def _loop_factory(command: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``serve`` runs on uvloop when it is installed (about twice the webhook throughput)."""
    if command != "serve":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        with asyncio.Runner(loop_factory=_loop_factory(args.command)) as runner:
            return runner.run(_run(args))
    except KeyboardInterrupt:
        return 130
    except LeadBotError as exc:
        print(f"lead-bot {args.command}: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"lead-bot {args.command}: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from ghl_real_estate_ai.demo import run_demo

        if args.days < 1 or args.days > 3650:
            print("lead-bot demo: --days must be between 1 and 3650", file=sys.stderr)
            return 2
        await run_demo(args.days, store=args.store)
        return 0
    if args.command == "simulate":
        return await _simulate(args)
    if args.command in ("comps", "cma"):
        from ghl_real_estate_ai import comps_cli

        return await comps_cli.run(args)
    from ghl_real_estate_ai import operator_cli

    return await operator_cli.run(args)


async def _simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ghl_real_estate_ai import compliance
    from ghl_real_estate_ai.config import Settings

    if not 1 <= args.leads <= 100_000:
        print("lead-bot simulate: --leads must be between 1 and 100000", file=sys.stderr)
        return 2
    if not 1 <= args.days <= 730:
        print("lead-bot simulate: --days must be between 1 and 730", file=sys.stderr)
        return 2
    out = Path(args.json) if args.json else None
    if out is not None and not out.parent.is_dir():
        print(f"lead-bot simulate: no such directory for --json: {out.parent}", file=sys.stderr)
        return 2
    rules = compliance.rules_from_settings(Settings.from_env())  # the operator's quiet hours and words
    print(f"Simulating {args.leads} leads over {args.days} days (seed {args.seed}), quiet hours "
          f"{rules.quiet_hours.default} local plus the state windows...", flush=True)
    report = await compliance.simulate(args.leads, args.days, args.seed, rules)
    print(report.summary())
    for kind, count in report.counts().items():
        print(f"  {kind:<17} {count}")
    for violation in report.violations[:10]:
        when = f"{violation.at:%Y-%m-%d %H:%M} UTC" if violation.at else ""
        print(f"  ! {violation.kind}: {violation.contact_id} {when}: {violation.detail}")
    if out is not None:
        compliance.write_json(report, out, seed=args.seed)
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
