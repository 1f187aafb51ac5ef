"""`prefix-server migrate`: brings the registry database's schema up to date (SPEC section 4).

Safe to run while replicas serve and from several places at once: revisions run under a database
lock, and a database already at the newest revision is left as it is. Exit codes: 0 done (or nothing
to do), 1 the database could not be reached or refused, 2 its schema is newer than this code.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "migrate",
        help="bring the registry database's schema up to date",
        description="Run the pending schema migrations on PREFIX_SERVER_DATABASE_URL (default: the SQLite "
        "file under PREFIX_SERVER_DATA_DIR). Replicas started with PREFIX_SERVER_MIGRATE=false need this first.",
    )
    parser.add_argument("--database-url", default=None, help="overrides PREFIX_SERVER_DATABASE_URL")
    parser.add_argument("--data-dir", default=None, help="overrides PREFIX_SERVER_DATA_DIR (for the SQLite default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from server.registry.base import RegistryUnavailable
    from server.registry.database import Database
    from server.registry.factory import default_database_url
    from server.registry.schema import SchemaMismatch, migrate
    from server.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    overrides = {k: v for k, v in (("database_url", args.database_url), ("data_dir", args.data_dir)) if v is not None}
    settings = Settings(**overrides)
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = default_database_url(settings.data_dir)
    database = Database(url)
    try:
        before, after = migrate(database)
    except SchemaMismatch as error:
        print(f"prefix-server migrate: {error}")
        return 2
    except RegistryUnavailable as error:
        print(f"prefix-server migrate: {error}")
        return 1
    finally:
        database.close()
    print(f"registry schema at revision {after}" + ("" if before == after else f" (was {before or 'empty'})")
          + f": {database.describe()}")
    return 0
