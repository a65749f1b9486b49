"""``Broker.claim`` in one round trip (bench/broker_pollers.py measured it as ``one`` before it became the
broker's claim), and the bench's use of the broker's own claim statement.

The claim sends ``SET LOCAL synchronous_commit = off; <the claim>`` as one simple-query message on an
autocommit connection. PostgreSQL runs a multi-statement message as one implicit transaction, so the
``SET LOCAL`` holds for the claim and its commit, and for nothing after it."""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import event, text

from bench.broker_pollers import broker_claim_sql
from curation.broker import _CLAIM, _CLAIM_ONE_MESSAGE, Broker
from tests.test_broker import TIMING, make_job


def test_the_claim_is_one_message(engine):
    assert _CLAIM_ONE_MESSAGE.text == "SET LOCAL synchronous_commit = off;" + _CLAIM.text
    make_job(engine, 4, 1)
    broker = Broker(engine, TIMING)
    w = broker.register_worker("probe", "test", 1)
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        leases = broker.claim(w, "probe", n=2)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(leases) == 2
    assert len(sent) == 1 and sent[0].startswith("SET LOCAL synchronous_commit = off;")  # no separate SET


def test_bench_measures_the_brokers_claim_statement():
    sql = broker_claim_sql()
    assert "%(stage)s" in sql and "%(n)s" in sql and "%(worker)s" in sql
    assert "lease_id::text" in sql  # casts are not parameters
    assert ":stage" not in sql and ":worker" not in sql
    # the statement itself is the broker's, with one column added to its RETURNING list
    body = _CLAIM.text.replace(":stage", "%(stage)s").replace(":n\n", "%(n)s\n").replace(":worker", "%(worker)s")
    assert sql.startswith(body.rstrip())


def test_the_claim_leases_committed_tasks(engine):
    make_job(engine, 10, 2)
    broker = Broker(engine, TIMING)
    w = broker.register_worker("probe", "test", 1)
    leases = broker.claim(w, "probe", n=2)
    assert len(leases) == 2
    with engine.connect() as other:  # committed: another session sees the leases
        leased = other.execute(text("SELECT task_id, lease_owner, lease_id::text FROM tasks WHERE state = 'leased' "
                                    "ORDER BY task_id")).all()
    assert [(r[0], r[1], r[2]) for r in leased] == sorted((x.task_id, w, x.lease_id) for x in leases)
    with engine.connect() as conn:  # the pooled connection the claim used is back to the server's settings
        assert conn.execute(text("SELECT current_setting('synchronous_commit')")).scalar_one() == "on"
        assert conn.connection.driver_connection.autocommit is False  # and out of autocommit


def test_set_local_holds_for_the_message_only(engine):
    fairy = engine.raw_connection()
    raw = fairy.driver_connection  # the psycopg2 connection itself (the pool's proxy keeps attributes set on it)
    try:
        raw.autocommit = True
        cur = raw.cursor()
        cur.execute("SET LOCAL synchronous_commit = off; SELECT current_setting('synchronous_commit')")
        assert cur.fetchone()[0] == "off"
        assert not [n for n in raw.notices if "SET LOCAL" in n]  # not 'outside a transaction block'
        cur.execute("SELECT current_setting('synchronous_commit')")
        assert cur.fetchone()[0] == "on"
    finally:
        fairy.close()


def test_claimers_never_share_a_task(engine):
    make_job(engine, 400, 1)
    broker = Broker(engine, TIMING)
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(i: int):
        w = broker.register_worker("probe", "test", i)
        while leases := broker.claim(w, "probe", n=3):
            with lock:
                claimed.extend(x.task_id for x in leases)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 400
    assert max(Counter(claimed).values()) == 1
