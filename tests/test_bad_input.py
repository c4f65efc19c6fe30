"""Bad input gets a clear error, changes nothing stored, and the node keeps serving others."""
from __future__ import annotations

import os
import random
import socket
import struct
import time

import pytest
import requests
from pynetdicom.sop_class import Verification

import rawdul
from harness import (HOST, SUCCESS, c_move, dcmtk, echo, find, find_sop, hexs, instance_uids,
                     is_failure, make_ae, part10, store, store_ok)

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def base(node, corpora):
    """A node holding the native corpus (8 instances), and the UIDs it answers for."""
    store_ok(node, corpora.native.instances)
    return node, sorted(instance_uids(node))


def assert_unharmed(node, before):
    """Nothing stored changed, and the node still answers C-ECHO and C-FIND."""
    assert node.running(), f"node process exited with code {node.proc.returncode}"
    assert echo(node) == SUCCESS, "node no longer answers C-ECHO"
    assert sorted(instance_uids(node)) == before, "the set of stored instances changed"


def mr_instance(corpora):
    return next(i for i in corpora.native.instances if i.ts == EXPLICIT)


# --------------------------------------------------------------------------- PDU level
def expect_abort_and_close(a: rawdul.RawAssociation, what: str):
    seen = a.wait_closed(timeout=15)
    assert rawdul.A_ABORT in seen, (
        f"{what}: connection closed without A-ABORT (PDUs received: "
        f"{[rawdul.PDU_NAMES.get(t, t) for t in seen]})")


@pytest.mark.parametrize("garbage", [
    pytest.param(b"\x55\x00\x00\x00\x00\x04abcd", id="unknown-pdu-type"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", id="http-request"),
    pytest.param(rawdul.pdu(rawdul.P_DATA_TF, rawdul.pdv(1, True, True, rawdul.echo_rq())),
                 id="p-data-before-association"),
])
def test_garbage_before_association_is_aborted(base, garbage):
    node, before = base
    a = rawdul.RawAssociation(node.dicom_port)
    try:
        a.send(garbage)
        expect_abort_and_close(a, "garbage before association")
    finally:
        a.close()
    assert_unharmed(node, before)


def test_oversized_associate_rq_is_aborted(base):
    node, before = base
    a = rawdul.RawAssociation(node.dicom_port)
    try:
        a.send(struct.pack(">BBI", rawdul.A_ASSOCIATE_RQ, 0, 0xFFFFFFF0) + b"\0" * 1024)
        expect_abort_and_close(a, "A-ASSOCIATE-RQ of 4 GB")
    finally:
        a.close()
    assert_unharmed(node, before)


def test_malformed_associate_rq_is_aborted(base):
    """A presentation context item whose length runs past the end of the PDU."""
    node, before = base
    good = rawdul.associate_rq(node.ae_title, "RAWDUL", [(1, rawdul.VERIFICATION,
                                                          [rawdul.IMPLICIT_LE])])
    body = bytearray(good[6:])
    pos = body.index(b"\x20\x00", 68)  # presentation context item (after the fixed fields)
    struct.pack_into(">H", body, pos + 2, 0x7FF0)
    a = rawdul.RawAssociation(node.dicom_port)
    try:
        a.send(rawdul.pdu(rawdul.A_ASSOCIATE_RQ, bytes(body)))
        expect_abort_and_close(a, "malformed A-ASSOCIATE-RQ")
    finally:
        a.close()
    assert_unharmed(node, before)


def test_oversized_p_data_is_aborted(base):
    node, before = base
    a = rawdul.RawAssociation(node.dicom_port)
    try:
        assert a.associate(node.ae_title) == rawdul.A_ASSOCIATE_AC
        a.send(struct.pack(">BBI", rawdul.P_DATA_TF, 0, 0x7FFFFFF0) + b"\0" * 4096)
        expect_abort_and_close(a, "P-DATA-TF of 2 GB (max PDU length 262144)")
    finally:
        a.close()
    assert_unharmed(node, before)


def test_pdv_longer_than_its_pdu_is_aborted(base):
    node, before = base
    a = rawdul.RawAssociation(node.dicom_port)
    try:
        assert a.associate(node.ae_title) == rawdul.A_ASSOCIATE_AC
        cmd = rawdul.echo_rq()
        item = struct.pack(">IBB", 0x10000, 1, 0x03) + cmd  # PDV claims 64 KiB
        a.send(rawdul.pdu(rawdul.P_DATA_TF, item))
        expect_abort_and_close(a, "PDV item longer than its PDU")
    finally:
        a.close()
    assert_unharmed(node, before)


def test_stalled_and_idle_connections_do_not_block_others(base):
    """Half-sent PDUs and silent connections held open while others work normally."""
    node, before = base
    held = []
    try:
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", node.dicom_port), timeout=10)
            held.append(s)
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", node.dicom_port), timeout=10)
            s.sendall(struct.pack(">BBI", rawdul.A_ASSOCIATE_RQ, 0, 1000) + b"\x00\x01")
            held.append(s)
        a = rawdul.RawAssociation(node.dicom_port)
        assert a.associate(node.ae_title) == rawdul.A_ASSOCIATE_AC
        a.send(struct.pack(">BBI", rawdul.P_DATA_TF, 0, 5000) + b"\0" * 10)
        held.append(a.sock)
        t0 = time.monotonic()
        assert_unharmed(node, before)
        assert time.monotonic() - t0 < 20
    finally:
        for s in held:
            s.close()
    assert_unharmed(node, before)


def test_abort_in_the_middle_of_a_store_keeps_nothing(base, corpora, node_factory):
    node, before = base
    inst = next(i for i in corpora.mixed.instances if i.ts == EXPLICIT)
    data = inst.data
    for how in ("a-abort", "close"):
        a = rawdul.RawAssociation(node.dicom_port)
        try:
            assert a.associate(node.ae_title, contexts=[(1, inst.sop_class, [inst.ts])]) == \
                rawdul.A_ASSOCIATE_AC
            a.send(rawdul.p_data(rawdul.pdv(1, True, True,
                                            rawdul.store_rq(inst.sop_class, inst.sop_uid))))
            a.send(rawdul.p_data(rawdul.pdv(1, False, False, data[:len(data) // 2])))
            if how == "a-abort":
                a.send(rawdul.pdu(rawdul.A_ABORT, b"\0\0\0\0"))
        finally:
            a.close()
        time.sleep(0.5)
        assert find_sop(node, inst) == 0, f"half an instance was stored ({how})"
    assert_unharmed(node, before)


# --------------------------------------------------------------------------- data set level
def raw_store(node, sop_class: str, ts: str, command_uid: str, data: bytes) -> int | None:
    """C-STORE of raw data set bytes on a raw association; returns the status, or None if the
    node aborted or closed instead of answering."""
    a = rawdul.RawAssociation(node.dicom_port, timeout=30)
    try:
        assert a.associate(node.ae_title, contexts=[(1, sop_class, [ts])]) == \
            rawdul.A_ASSOCIATE_AC
        assert a.accepted(1), f"{sop_class}/{ts} not accepted: {a.contexts}"
        a.send(rawdul.p_data(rawdul.pdv(1, True, True, rawdul.store_rq(sop_class, command_uid))))
        for k in range(0, max(len(data), 1), 16000):
            last = k + 16000 >= len(data)
            a.send(rawdul.p_data(rawdul.pdv(1, False, last, data[k:k + 16000])))
        try:
            status = a.status()
        except AssertionError:
            return None
        a.release()
        return status
    finally:
        a.close()


def element_value_offset(data: bytes, tag: tuple[int, int]) -> int:
    """Offset of the value of a top-level element in explicit VR LE data (simple scan)."""
    needle = struct.pack("<HH", *tag)
    pos = data.index(needle)
    vr = data[pos + 4:pos + 6]
    return pos + (12 if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT") else 8)


def truncations(data: bytes) -> dict[str, bytes]:
    name = element_value_offset(data, (0x0010, 0x0010))
    pixels = element_value_offset(data, (0x7FE0, 0x0010))
    return {
        "inside-patient-name": data[:name + 3],
        "inside-pixel-data": data[:pixels + (len(data) - pixels) // 2],
        "last-byte-missing": data[:-1],
        "inside-element-header": data[:pixels - 6],
    }


@pytest.mark.parametrize("cut", ["inside-patient-name", "inside-pixel-data",
                                 "last-byte-missing", "inside-element-header"])
def test_truncated_data_set_fails_and_stores_nothing(base, corpora, tmp_path, cut):
    """Sent by pynetdicom as the raw bytes of a Part 10 file whose data set is cut short."""
    node, before = base
    inst = next(i for i in corpora.mixed.instances if i.ts == EXPLICIT)
    data = truncations(inst.data)[cut]
    path = tmp_path / "truncated.dcm"
    path.write_bytes(part10(inst.sop_class, inst.sop_uid, inst.ts, data))
    status = store(node, [path])[path]
    assert is_failure(status), f"truncated data set ({cut}): status {hexs(status)}"
    assert find_sop(node, inst) == 0
    assert_unharmed(node, before)


@pytest.mark.parametrize("kind", ["random-bytes", "huge-element-length", "empty",
                                  "implicit-sent-as-explicit"])
def test_unparsable_data_set_fails_and_stores_nothing(base, corpora, kind):
    node, before = base
    inst = next(i for i in corpora.mixed.instances if i.ts == EXPLICIT)
    uid = "1.2.826.0.1.3680043.8.498.999." + str(random.randrange(10**9))
    if kind == "random-bytes":
        data = random.Random(5).randbytes(5000)
    elif kind == "huge-element-length":
        data = struct.pack("<HH2sHI", 0x0008, 0x0016, b"UN", 0, 0xFFFFFFF0) + b"\0" * 100
    elif kind == "empty":
        data = b""
    else:
        data = next(i for i in corpora.native.instances if i.ts == "1.2.840.10008.1.2").data
        uid = next(i for i in corpora.native.instances if i.ts == "1.2.840.10008.1.2").sop_uid
    status = raw_store(node, inst.sop_class, EXPLICIT, uid, data)
    assert is_failure(status), f"{kind}: status {hexs(status)}"
    assert_unharmed(node, before)


def reencode_with_uid(inst, new_uid: str) -> bytes:
    """The instance's data set (explicit VR LE) with SOPInstanceUID replaced by `new_uid`."""
    data = inst.data
    pos = data.index(struct.pack("<HH", 0x0008, 0x0018))
    ln = struct.unpack_from("<H", data, pos + 6)[0]
    val = new_uid.encode()
    if len(val) % 2:
        val += b"\0"
    return data[:pos] + struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", len(val)) + val + \
        data[pos + 8 + ln:]


def test_sop_instance_uid_mismatch_fails_with_a900(base, corpora):
    node, before = base
    inst = next(i for i in corpora.mixed.instances if i.ts == EXPLICIT)
    other = inst.sop_uid[:-3] + "999"
    data = reencode_with_uid(inst, other)
    status = raw_store(node, inst.sop_class, EXPLICIT, inst.sop_uid, data)
    assert status == 0xA900, f"data set UID != command UID: status {hexs(status)}"
    assert find_sop(node, inst) == 0
    assert find_sop(node, other, inst.study_uid, inst.series_uid) == 0
    assert_unharmed(node, before)


@pytest.mark.parametrize("bad_uid", ["../../x", "1..2", "1.2.3.", ".1.2.3", "1.2.abc.4",
                                     "1.2.03.4", "1.2/3", "1." + "2" * 64, "1.2.3\\1.2.4"])
def test_invalid_uid_fails_and_is_never_a_path(base, corpora, tmp_path_factory, bad_uid):
    node, before = base
    inst = next(i for i in corpora.mixed.instances if i.ts == EXPLICIT)
    data = reencode_with_uid(inst, bad_uid)
    status = raw_store(node, inst.sop_class, EXPLICIT, bad_uid, data)
    assert is_failure(status), f"invalid SOP Instance UID {bad_uid!r}: status {hexs(status)}"
    assert find_sop(node, inst) == 0
    # nothing named after the UID's last path component anywhere in the test area
    base_dir = tmp_path_factory.getbasetemp()
    leaked = [os.path.join(d, f) for d, _, fs in os.walk(base_dir) for f in fs
              if f in ("x", "x.dcm")]
    assert not leaked, f"a UID became a path: {leaked}"
    assert_unharmed(node, before)


def test_invalid_study_uid_in_data_set_fails(base, corpora):
    node, before = base
    inst = next(i for i in corpora.mixed.instances if i.ts == EXPLICIT)
    data = inst.data
    pos = data.index(struct.pack("<HH", 0x0020, 0x000D))
    ln = struct.unpack_from("<H", data, pos + 6)[0]
    val = b"../../study"
    data = data[:pos] + struct.pack("<HH2sH", 0x0020, 0x000D, b"UI", len(val) + 1) + val + \
        b"\0" + data[pos + 8 + ln:]
    status = raw_store(node, inst.sop_class, EXPLICIT, inst.sop_uid, data)
    assert is_failure(status), f"StudyInstanceUID '../../study': status {hexs(status)}"
    assert find_sop(node, inst) == 0
    assert_unharmed(node, before)


def test_command_sop_class_differs_from_context(base, corpora):
    """A CT object sent on an MR Image Storage context (wrong SOP class): refused."""
    node, before = base
    inst = next(i for i in corpora.mixed.instances
                if i.ts == EXPLICIT and i.sop_class != MR)
    a = rawdul.RawAssociation(node.dicom_port)
    try:
        assert a.associate(node.ae_title, contexts=[(1, MR, [EXPLICIT])]) == rawdul.A_ASSOCIATE_AC
        a.send(rawdul.p_data(rawdul.pdv(1, True, True,
                                        rawdul.store_rq(inst.sop_class, inst.sop_uid))))
        data = inst.data
        for k in range(0, len(data), 16000):
            a.send(rawdul.p_data(rawdul.pdv(1, False, k + 16000 >= len(data),
                                            data[k:k + 16000])))
        try:
            status = a.status()
        except AssertionError:
            status = None  # aborted: also a clear refusal
        assert status is None or is_failure(status), f"status {hexs(status)}"
    finally:
        a.close()
    assert find_sop(node, inst) == 0
    assert_unharmed(node, before)


# --------------------------------------------------------------------------- association level
def test_non_storage_abstract_syntax_is_rejected(base):
    node, before = base
    print_mgmt = "1.2.840.10008.5.1.1.9"   # Basic Grayscale Print Management Meta SOP Class
    made_up = "1.2.826.0.1.3680043.8.498.77.1"
    ae = make_ae()
    ae.add_requested_context(Verification)
    ae.add_requested_context(print_mgmt)
    ae.add_requested_context(made_up)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.ae_title)
    try:
        assert assoc.is_established
        accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
        assert accepted == {Verification}, f"accepted: {accepted}"
        assert {str(c.abstract_syntax) for c in assoc.rejected_contexts} == {print_mgmt, made_up}
        assert status_ok(assoc.send_c_echo())
    finally:
        assoc.release()
        ae.shutdown()
    assert_unharmed(node, before)


def status_ok(rsp) -> bool:
    return rsp is not None and "Status" in rsp and rsp.Status == SUCCESS


def test_unknown_calling_ae_is_rejected(node_factory, corpora):
    node = node_factory(allowed_calling_aes=["MODALITY1"])
    # dcmtk, not pynetdicom: pynetdicom 3.0 sometimes loses the A-ASSOCIATE-RJ primitive
    # when its DUL closes the socket on receiving it, and reports an abort instead.
    for tool in ("echoscu", "storescu"):
        args = ["-aet", "INTRUDER", "-aec", node.ae_title, "127.0.0.1", node.dicom_port]
        if tool == "storescu":
            args.append(corpora.native.instances[0].path)
        r = dcmtk(tool, *args, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode != 0, f"{tool} as INTRUDER was not refused:\n{out}"
        assert "Association Rejected" in out and "Source: Service User" in out \
            and "Calling AE Title Not Recognized" in out, (
                "expected A-ASSOCIATE-RJ by the service user, 'calling AE title not "
                f"recognized', {tool} said:\n{out}")
    store_ok(node, corpora.native.instances, ae_title="MODALITY1")
    assert echo(node, ae_title="MODALITY1") == SUCCESS
    assert len(instance_uids_as(node, "MODALITY1")) == len(corpora.native.instances)


def instance_uids_as(node, ae_title):
    out = []
    studies = find(node, "STUDY", {"StudyInstanceUID": ""}, ae_title=ae_title)
    for st in studies.identifiers:
        r = find(node, "IMAGE", {"StudyInstanceUID": st.StudyInstanceUID, "SeriesInstanceUID": "",
                                 "SOPInstanceUID": ""}, ae_title=ae_title)
        out += r.values("SOPInstanceUID")
    return out


def test_cmove_to_unknown_destination_fails_with_a801(base, corpora):
    node, before = base
    inst = corpora.native.instances[0]
    res = c_move(node, "STUDY", {"StudyInstanceUID": inst.study_uid}, "NOSUCHAE")
    assert res.status == 0xA801, f"C-MOVE to unknown AE: status {hexs(res.status)}"
    assert_unharmed(node, before)


@pytest.mark.parametrize("keys", [
    pytest.param({"QueryRetrieveLevel": "STUDY", "StudyDate": "2020-13-45"}, id="date-2020-13-45"),
    pytest.param({"QueryRetrieveLevel": "STUDY", "StudyDate": "20201345"}, id="date-month-13"),
    pytest.param({"QueryRetrieveLevel": "STUDY", "StudyDate": "abc-def"}, id="date-range-letters"),
    pytest.param({"QueryRetrieveLevel": "STUDY", "StudyTime": "256199"}, id="time-25h"),
    pytest.param({"QueryRetrieveLevel": "FOO"}, id="level-FOO"),
    pytest.param({"QueryRetrieveLevel": ""}, id="level-empty"),
    pytest.param({}, id="level-missing"),
    pytest.param({"QueryRetrieveLevel": "STUDY\\SERIES"}, id="level-two-values"),
])
def test_bad_find_identifier_fails(base, keys):
    node, before = base
    ident = {"StudyInstanceUID": "", **keys}
    res = find(node, None, ident)
    assert is_failure(res.status), f"{keys}: final status {hexs(res.status)}"
    assert not res.identifiers, f"{keys}: {len(res.identifiers)} matches returned"
    assert_unharmed(node, before)


# --------------------------------------------------------------------------- timeouts
def test_silent_connection_closed_after_association_timeout(node_factory):
    """A connection that never sends an A-ASSOCIATE-RQ is dropped after
    association_timeout_secs (here 2 s)."""
    node = node_factory(dicom={"association_timeout_secs": 2, "idle_timeout_secs": 60})
    s = socket.create_connection(("127.0.0.1", node.dicom_port), timeout=15)
    try:
        t0 = time.monotonic()
        s.settimeout(15)
        try:
            while s.recv(4096):
                pass
        except (socket.timeout, ConnectionResetError) as e:
            if isinstance(e, socket.timeout):
                pytest.fail("silent connection still open after 15 s")
        assert time.monotonic() - t0 < 10
    finally:
        s.close()
    assert echo(node) == SUCCESS


def test_idle_association_closed_after_idle_timeout(node_factory):
    """An established association with no traffic is aborted/released after
    idle_timeout_secs (here 2 s)."""
    node = node_factory(dicom={"association_timeout_secs": 30, "idle_timeout_secs": 2})
    a = rawdul.RawAssociation(node.dicom_port)
    try:
        assert a.associate(node.ae_title) == rawdul.A_ASSOCIATE_AC
        t0 = time.monotonic()
        a.wait_closed(timeout=15)
        assert time.monotonic() - t0 < 10
    finally:
        a.close()
    assert echo(node) == SUCCESS


def test_unknown_http_paths_are_problem_json_404(node):
    """Any URL no service answers is a 404 problem naming it, not an empty body; a method a
    URL does not take is a 405 problem."""
    for path in ("/", "/dicom-web/foo", "/dicom-web/studies/1.2.3/nothing", "/wado/x"):
        r = requests.get(f"http://{HOST}:{node.http_port}{path}", timeout=10)
        assert r.status_code == 404, path
        assert r.headers["Content-Type"] == "application/problem+json", path
        assert path in r.json()["detail"]
    r = requests.post(f"http://{HOST}:{node.http_port}/healthz", timeout=10)
    assert r.status_code == 405 and r.headers["Content-Type"] == "application/problem+json"
    assert "POST" in r.json()["detail"] and "GET" in r.headers["Allow"]
