"""`scaigrid admin bootstrap`: the first platform-admin key on an empty database (printed as the last line)."""
from __future__ import annotations

import sys

from scaigrid.adapters.sql.engine import sessions_for
from scaigrid.adapters.sql.identity import IdentityRepository
from scaigrid.adapters.sql.migrate import upgrade
from scaigrid.runtime.settings import Settings

from ..shared.api_keys import mint


def bootstrap(args) -> int:
    url = Settings().database_url
    upgrade(url)
    identity = IdentityRepository(sessions_for(url, 2))
    if identity.platform_admin_exists():
        print("scaigrid: a platform-admin key exists already; bootstrap runs once. Create more keys with it "
              "(POST /api/v1/tenants/{platform tenant}/keys) or revoke it there.", file=sys.stderr)
        return 1
    actor = {"request_id": "bootstrap"}
    tenant = identity.platform_tenant() or identity.create_tenant(args.tenant, actor, is_platform=True)
    key, lookup, secret_hash = mint()
    record = identity.create_key(tenant["id"], args.name, "platform-admin", lookup, secret_hash, None, None, actor)
    print(f"platform tenant: {tenant['name']} ({tenant['id']})")
    print(f"platform-admin key '{record['name']}' ({record['id']}); shown once, store it now:")
    print(key)
    return 0


def register(sub) -> None:
    admin = sub.add_parser("admin", help="tenants and keys from the shell").add_subparsers(dest="admin_cmd",
                                                                                            required=True)
    p = admin.add_parser("bootstrap", help="create the first platform-admin key (prints it as the last line)")
    p.add_argument("--tenant", default="platform", help="name of the platform tenant (default: platform)")
    p.add_argument("--name", default="bootstrap", help="name of the key")
    p.set_defaults(func=bootstrap)
