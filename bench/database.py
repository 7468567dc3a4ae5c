"""The bench's own database: created fresh, migrated, filled with logged-in users; and its write counters."""

from __future__ import annotations

import os
import string
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from bench.load import Account
from bench.procs import ROOT

POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/streamchat_bench"
SQLITE_PATH = ROOT / "bench" / "out" / "bench.sqlite3"
CSRF_CHARS = string.ascii_letters + string.digits


def database_url(kind: str) -> str:
    return POSTGRES_URL if kind == "postgres" else f"sqlite:///{SQLITE_PATH}"


def recreate(url: str, env: dict[str, str]) -> None:
    """Drop and create the bench database, then migrate it with the app's own command."""
    if url.startswith("sqlite"):
        for suffix in ("", "-wal", "-shm"):
            Path(f"{SQLITE_PATH}{suffix}").unlink(missing_ok=True)
        SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
    else:
        import psycopg

        name = urlsplit(url).path.lstrip("/")
        admin = url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # our own fixed name, not input
            conn.execute(f'CREATE DATABASE "{name}"')
    migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v0"]
    subprocess.run(migrate, cwd=ROOT, env={**env, "DATABASE_URL": url}, check=True)


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()


def make_accounts(count: int) -> list[tuple[int, str, str]]:
    """Users with sessions made the way login makes them: (user id, Cookie header, CSRF token)."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.auth.hashers import make_password
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    user_model = get_user_model()
    users = user_model.objects.bulk_create(
        [user_model(username=f"bench{i}", password=make_password(None)) for i in range(count)]
    )
    store, expires, sessions, accounts = SessionStore(), timezone.now() + timedelta(days=1), [], []
    for user in users:
        key = get_random_string(32, string.ascii_lowercase + string.digits)
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        sessions.append(Session(session_key=key, session_data=store.encode(data), expire_date=expires))
        csrf = get_random_string(32, CSRF_CHARS)
        accounts.append((user.pk, f"sessionid={key}; csrftoken={csrf}", csrf))
    Session.objects.bulk_create(sessions)
    return accounts


def fresh_conversations(users: list[tuple[int, str, str]]) -> list[Account]:
    """One new conversation per user, so every cell's prompts are the same size."""
    from chat.models import Conversation

    conversations = Conversation.objects.bulk_create(
        [Conversation(user_id=user_id, model="openai:bench", title="bench") for user_id, _, _ in users]
    )
    return [
        Account(conversation_id=c.pk, cookie=cookie, csrf=csrf)
        for c, (_, cookie, csrf) in zip(conversations, users, strict=True)
    ]


def row_writes() -> dict[str, int] | None:
    """Rows inserted + updated so far, per table and in all (PostgreSQL's statistics; None on SQLite)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT relname, n_tup_ins + n_tup_upd FROM pg_stat_user_tables")
        rows = dict(cursor.fetchall())
    connection.close()
    rows["all"] = sum(rows.values())
    return rows


def open_connections() -> int | None:
    """Connections to the bench database now, the bench's own excepted (PostgreSQL only)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    import psycopg

    url = connection.settings_dict
    dsn = f"postgresql://{url['USER']}@{url['HOST']}:{url['PORT'] or 5432}/{url['NAME']}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else None


def server_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            version = f"PostgreSQL {cursor.fetchone()[0]}"
        else:
            cursor.execute("SELECT sqlite_version()")
            version = f"SQLite {cursor.fetchone()[0]}"
    connection.close()
    return version
