"""Persistence: SQLAlchemy 2 models, the database handle and its migrations.

SQLite in WAL mode under the data directory by default; PostgreSQL when ``FLEETGUARD_DATABASE_URL``
names one. Migrations run automatically when a :class:`Database` is opened.
"""

from fleetguard.store.database import Database, open_database
from fleetguard.store.errors import ConcurrentUpdate, DuplicateKey, StoreError, StoreUnavailable

__all__ = [
    "ConcurrentUpdate",
    "Database",
    "DuplicateKey",
    "StoreError",
    "StoreUnavailable",
    "open_database",
]
