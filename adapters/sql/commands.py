"""`scaigrid db upgrade|current`, and the migrations `scaigrid up` applies before starting functions that use SQL."""
from __future__ import annotations

import sys

from scaigrid.runtime.settings import Settings, redact_url

from .migrate import current, upgrade


def _upgrade(args) -> int:
    url = Settings().database_url
    upgrade(url, args.revision)
    print(f"database {redact_url(url)} at revision {current(url)}")
    return 0


def _current(args) -> int:
    url = Settings().database_url
    print(current(url) or "empty (run: scaigrid db upgrade)")
    return 0


def register(sub) -> None:
    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db_cmd", required=True)
    p = db.add_parser("upgrade", help="apply migrations (scaigrid up does this too)")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(func=_upgrade)
    db.add_parser("current", help="the revision the database is at").set_defaults(func=_current)


def before_up(settings: Settings, stores: set[str], graph=None) -> None:
    """Bring the schema up to date before any function that uses PostgreSQL starts."""
    if "postgres" in stores:
        upgrade(settings.database_url)
        print(f"scaigrid: database at revision {current(settings.database_url)}", file=sys.stderr)


def doctor(settings: Settings, graph, down: set[str]):
    """`scaigrid doctor`: the schema at the revision this version ships (`scaigrid up` migrates; a replica of an
    older version next to a newer schema is what this catches)."""
    from alembic.script import ScriptDirectory

    from scaigrid.runtime.doctor import Check

    from .migrate import alembic_config

    if "postgres" in down:
        return
    url = settings.database_url
    try:
        at = current(url)
    except Exception as exc:  # no PostgreSQL in this graph, or a permission problem: say it, do not crash
        yield Check("schema", "warn", f"could not read the revision: {str(exc).splitlines()[0][:200]}")
        return
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if at == head:
        yield Check("schema", "ok", f"at revision {at} (this version's)")
    else:
        yield Check("schema", "fail", f"at revision {at or 'none'}, this version ships {head}",
                    "scaigrid db upgrade (scaigrid up does it too)")
