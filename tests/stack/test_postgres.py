"""The stack's PostgreSQL: loopback only, password auth, pgvector, clean stop."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
import pytest

from visage_ml.stack import proc


def test_vector_extension_and_password(stack_postgres):
    with psycopg.connect(stack_postgres.dsn) as conn:
        (version,) = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchone()
        assert version
        (listen,) = conn.execute("SHOW listen_addresses").fetchone()
        assert listen == "127.0.0.1"
        (sockets,) = conn.execute("SHOW unix_socket_directories").fetchone()
        assert sockets == ""
    # The attack: a client on loopback without the password is refused.
    secret = quote(stack_postgres.password, safe="")
    wrong = stack_postgres.dsn.replace(f":{secret}@", ":not-the-password@")
    assert wrong != stack_postgres.dsn
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(wrong)


def test_data_dir_private(stack_postgres):
    assert (stack_postgres.data_dir / "PG_VERSION").is_file()
    assert stack_postgres.data_dir.stat().st_mode & 0o077 == 0
    uid, _ = proc.service_ids()
    assert stack_postgres.data_dir.stat().st_uid == uid
