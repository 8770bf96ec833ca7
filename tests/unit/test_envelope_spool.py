"""The runtime's envelope and typed errors (what survives the RPC hop), and the after-step spool on a tmp folder:
records on disk before delivery, a torn last record, what a killed predecessor left, refused records set aside,
an unreachable broker retried, `full`, and segments gone once confirmed."""
import os
import time

import eventlet
import msgpack
import pytest
from amqp.exceptions import ConnectionForced
from kombu.exceptions import OperationalError
from nameko.exceptions import deserialize, serialize

from scaigrid.runtime.envelope import ENVELOPE_VERSION, answer, new_envelope
from scaigrid.runtime.errors import BadRequest, RateLimited, StepError, as_step_error
from scaigrid.runtime.spool import HEADER, Spool, broker_unreachable, process_spool, read_segment

# envelope and errors ------------------------------------------------------------------------------------------


def test_a_new_envelope_is_plain_data_with_a_fresh_id():
    one, two = new_envelope("chat", {"body": {}}), new_envelope("chat", {"body": {}})
    assert one["id"].startswith("req_") and len(one["id"]) == 36 and one["id"] != two["id"]
    assert (one["version"], one["done"], one["error"], one["secrets"]) == (ENVELOPE_VERSION, False, None, {})
    assert msgpack.unpackb(msgpack.packb(one)) == one  # crosses the bus as it is
    given = new_envelope("chat", {}, request_id="req_given", client_request_id="theirs", tenant="t1")
    assert (given["id"], given["client_request_id"], given["tenant"]) == ("req_given", "theirs", "t1")
    early = answer(given, {"cached": True})  # a step that answers early ends the route
    assert early["done"] is True and early["response"] == {"cached": True}


def test_a_typed_error_survives_the_rpc_hop():
    sent = RateLimited("slow down", code="rpm_exceeded", details={"retry_after": 7})
    got = deserialize(msgpack.unpackb(msgpack.packb(serialize(sent))))
    assert type(got) is RateLimited and got.status == 429
    assert (got.message, got.code, got.param) == ("slow down", "rpm_exceeded", None)  # not the string "None"
    assert str(got.details["retry_after"]) == "7"


def test_an_error_without_a_code_keeps_its_class_default():
    got = deserialize(serialize(BadRequest("bad", param="messages")))
    assert (got.code, got.param, got.details) == ("invalid_request", "messages", {})


def test_anything_else_a_step_leaks_is_a_500_naming_only_its_type():
    leaked = as_step_error(KeyError("secret internals"))
    assert type(leaked) is StepError and leaked.status == 500 and leaked.code == "internal_error"
    assert "KeyError" in leaked.message and "secret" not in leaked.message
    typed = BadRequest("x")
    assert as_step_error(typed) is typed


# the spool ----------------------------------------------------------------------------------------------------

def write_segment(folder, records, torn: bytes = b"") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    blobs = [msgpack.packb(r, use_bin_type=True) for r in records]
    (folder / "seg-00000000000000000001-1.log").write_bytes(b"".join(HEADER.pack(len(b)) + b for b in blobs) + torn)


def record(n: int) -> dict:
    return {"step": "accounting.record", "body": {"id": f"req_{n}"}, "at": 1.0}


def deliver(spool: Spool, publish, timeout: float = 5.0) -> bool:
    spool.start(publish)
    try:
        return spool.drain(timeout)
    finally:
        spool.close()


def test_an_appended_record_is_on_disk_before_delivery(tmp_path):
    spool = Spool(tmp_path / "sp", 2**20)
    spool.append("accounting.record", {"id": "req_1", "n": 1})
    [segment] = list(spool.folder.glob("seg-*.log"))
    [on_disk] = read_segment(segment)
    assert (on_disk["step"], on_disk["body"]) == ("accounting.record", {"id": "req_1", "n": 1})
    assert spool.pending == 1 and spool.unconfirmed_bytes == segment.stat().st_size
    spool.close()


def test_a_torn_last_record_is_left_out(tmp_path):
    write_segment(tmp_path, [record(1), record(2)], torn=HEADER.pack(500) + b"\x81\xa1")
    assert [r["body"]["id"] for r in read_segment(next(tmp_path.glob("seg-*")))] == ["req_1", "req_2"]


def test_what_a_killed_predecessor_left_goes_out_first(tmp_path):
    folder = tmp_path / "gateway-0"
    write_segment(folder, [record(1), record(2)], torn=b"\x00\x00")
    spool = Spool(folder, 2**20)
    spool.append("accounting.record", {"id": "req_3"})
    sent = []
    assert deliver(spool, lambda records: sent.extend(r["body"]["id"] for r in records))
    assert sent == ["req_1", "req_2", "req_3"]
    assert not list(folder.glob("seg-*.log"))  # every record confirmed: no segment left to resend


def test_a_refused_record_is_set_aside_and_the_rest_go_on(tmp_path):
    spool = Spool(tmp_path / "sp", 2**20)
    for n in (1, 2, 3):
        spool.append("accounting.record", {"id": f"req_{n}"})
    sent = []

    def publish(records):  # all or nothing, as one round with one wait for confirms
        if any(r["body"]["id"] == "req_2" for r in records):
            raise ValueError("the broker refuses this one")
        sent.extend(r["body"]["id"] for r in records)

    assert deliver(spool, publish)
    assert sent == ["req_1", "req_3"]
    [rejected] = read_segment(spool.folder / "rejected.log")
    assert rejected["body"]["id"] == "req_2" and "refuses" in rejected["error"]


def test_an_unreachable_broker_keeps_the_record_and_retries(tmp_path):
    spool = Spool(tmp_path / "sp", 2**20)
    spool.append("accounting.record", {"id": "req_1"})
    attempts = []

    def publish(records):
        attempts.extend(r["body"]["id"] for r in records)
        if len(attempts) < 3:
            raise ConnectionRefusedError("broker away")

    assert deliver(spool, publish)
    assert attempts == ["req_1"] * 3 and not (spool.folder / "rejected.log").exists()


def test_undelivered_records_stay_on_disk(tmp_path):
    spool = Spool(tmp_path / "sp", 2**20)
    spool.append("accounting.record", {"id": "req_1"})

    def publish(records):
        raise OSError("no route to broker")

    assert deliver(spool, publish, timeout=0.3) is False
    [segment] = list(spool.folder.glob("seg-*.log"))
    assert [r["body"]["id"] for r in read_segment(segment)] == ["req_1"]


def test_full_when_unconfirmed_bytes_reach_the_cap(tmp_path):
    spool = Spool(tmp_path / "sp", max_bytes=200)
    while not spool.full:
        spool.append("accounting.record", {"id": "req", "pad": "x" * 40})
    assert spool.unconfirmed_bytes >= 200 and spool.pending >= 2
    assert deliver(spool, lambda records: None)
    assert not spool.full and spool.unconfirmed_bytes == 0


def test_a_busy_spool_delivers_in_rounds_and_a_quiet_one_at_once(tmp_path):
    """Records that come while a round is out (or within `linger` of the last) go together in the next round; the
    first record of a quiet spool goes alone, with no wait."""
    spool = Spool(tmp_path / "sp", 2**20, linger=0.2)
    rounds, started = [], time.monotonic()

    def publish(records):
        rounds.append(([r["body"]["id"] for r in records], round(time.monotonic() - started, 2)))

    spool.start(publish)
    try:
        spool.append("accounting.record", {"id": "req_0"})
        eventlet.sleep(0.05)
        for n in range(1, 6):
            spool.append("accounting.record", {"id": f"req_{n}"})
        assert spool.drain(5)
    finally:
        spool.close()
    assert [ids for ids, _ in rounds] == [["req_0"], ["req_1", "req_2", "req_3", "req_4", "req_5"]]
    assert rounds[0][1] < 0.05 and rounds[1][1] >= 0.2


def test_a_second_live_spool_takes_a_folder_of_its_own(tmp_path):
    first = Spool(tmp_path / "sp", 2**20)
    second = Spool(tmp_path / "sp", 2**20)
    assert first.folder == tmp_path / "sp" and second.folder == tmp_path / f"sp.pid{os.getpid()}"
    first.close()
    second.close()
    shared = process_spool(tmp_path / "shared", 2**20)  # what a gateway and its inline functions share
    assert process_spool(tmp_path / "shared", 2**20) is shared
    shared.close()


@pytest.mark.parametrize("exc, unreachable", [
    (ConnectionResetError(), True), (TimeoutError(), True), (OSError("EHOSTUNREACH"), True),
    (OperationalError("gone"), True), (ConnectionForced("closed"), True),  # the AMQP client's own
    (ValueError("bad"), False), (TypeError("not packable"), False)])
def test_which_errors_mean_the_broker_is_away(exc, unreachable):
    assert broker_unreachable(exc) is unreachable
