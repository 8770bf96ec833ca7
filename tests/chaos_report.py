"""What a chaos test counts under a fault, and the table it prints: requests sent, answered, failed, ledger rows,
lost and doubled (the last two must be 0)."""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import psycopg2


@dataclass
class Tally:
    """Requests sent under one fault: which were answered (200, or 202 for accepted work: their request ids) and
    how the others failed."""

    fault: str
    ledger_suffix: str = ""  # a route whose usage row is '<request id><suffix>' (a search's embedding)
    answered: list[str] = field(default_factory=list)
    failed: Counter = field(default_factory=Counter)
    slowest_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sent(self) -> int:
        return len(self.answered) + sum(self.failed.values())

    def send(self, client: httpx.Client, url: str, body: dict, timeout: float = 30) -> None:
        """One request; a hang past `timeout` counts as a failure of its own kind."""
        started = time.monotonic()
        try:
            r = client.post(url, json=body, timeout=timeout)
            outcome = r.headers["x-request-id"] if r.status_code in (200, 202) else f"{r.status_code} " + str(
                (r.json().get("error") or {}).get("code") if r.headers.get("content-type", "").startswith(
                    "application/json") else "")
        except httpx.TimeoutException:
            outcome = "hung"
        except httpx.HTTPError as exc:
            outcome = f"connection ({type(exc).__name__})"
        with self.lock:
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            if outcome.startswith("req_"):
                self.answered.append(outcome)
            else:
                self.failed[outcome] += 1

    def ledger(self, database_url: str, timeout: float = 60) -> tuple[int, int, int]:
        """(ledger rows of the answered requests, lost, doubled), waiting up to `timeout` s for stragglers.

        request_id is the ledger's primary key, so a redelivered record cannot make a second row; where a double
        would show is the daily rollup, which adds each batch's new rows: doubled = what the rollup counts for the
        keys involved minus the ledger rows it was made from (anything else than 0 is money counted twice)."""
        wanted = [rid + self.ledger_suffix for rid in self.answered]
        deadline = time.monotonic() + timeout
        while True:
            with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
                cur.execute("SELECT request_id, key_id FROM usage_ledger WHERE request_id = ANY(%s)", (wanted,))
                found = dict(cur.fetchall())
                keys = list({str(k) for k in found.values() if k})
                cur.execute("SELECT (SELECT coalesce(sum(requests), 0) FROM usage_daily WHERE key_id::text = ANY(%s))"
                            " - (SELECT count(*) FROM usage_ledger WHERE key_id::text = ANY(%s))", (keys, keys))
                doubled = int(cur.fetchone()[0])
            lost = len(set(wanted) - set(found))
            if not lost or time.monotonic() > deadline:
                return len(found), lost, doubled
            time.sleep(0.5)


def traffic(tally: Tally, url: str, body: dict, headers: dict, stop: threading.Event, workers: int = 4,
            pause: float = 0.02) -> list[threading.Thread]:
    """Steady requests from `workers` threads until `stop` is set (bounded: each request has a timeout)."""
    def loop():
        with httpx.Client(headers=headers) as client:
            while not stop.is_set():
                tally.send(client, url, body)
                time.sleep(pause)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    return threads


def report(rows: list[tuple[Tally, tuple[int, int, int]]]) -> str:
    """The table, one row per fault; printed by the tests (`pytest -m chaos -s` shows it)."""
    head = f"{'fault':<34} {'sent':>6} {'answered':>9} {'failed':>7} {'ledger':>7} {'lost':>5} {'doubled':>8}  failures"
    lines = [head, "-" * len(head)]
    for tally, (rows_, lost, doubled) in rows:
        why = ", ".join(f"{k}: {v}" for k, v in tally.failed.most_common()) or "-"
        lines.append(f"{tally.fault:<34} {tally.sent:>6} {len(tally.answered):>9} {sum(tally.failed.values()):>7} "
                     f"{rows_:>7} {lost:>5} {doubled:>8}  {why}")
    return "\n".join(lines)
