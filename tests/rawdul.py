"""A tiny DICOM Upper Layer client on raw sockets, for sending what real clients never send:
malformed and oversized PDUs, command sets split over PDVs, hand-made DIMSE messages."""
from __future__ import annotations

import socket
import struct
import time

APP_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF",
             5: "A-RELEASE-RQ", 6: "A-RELEASE-RP", 7: "A-ABORT"}


def _uid(s: str) -> bytes:
    b = s.encode()
    return b + b"\0" if len(b) % 2 else b


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body) if length is None else length) + body


def associate_rq(called: str, calling: str, contexts: list[tuple[int, str, list[str]]],
                 max_pdu: int = 16384) -> bytes:
    """contexts: (id, abstract syntax, [transfer syntaxes])"""
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16)[:16] + \
        calling.encode().ljust(16)[:16] + b"\0" * 32
    body += _item(0x10, APP_CONTEXT.encode())
    for cid, abstract, tss in contexts:
        sub = _item(0x30, abstract.encode())
        for ts in tss:
            sub += _item(0x40, ts.encode())
        body += _item(0x20, struct.pack(">BBBB", cid, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu))
    user += _item(0x52, b"1.2.826.0.1.3680043.8.498.1.3")
    user += _item(0x55, b"RAWDUL")
    body += _item(0x50, user)
    return pdu(A_ASSOCIATE_RQ, body)


def parse_associate_ac(body: bytes) -> dict[int, tuple[int, str]]:
    """-> {context id: (result, transfer syntax)}; result 0 = acceptance."""
    out = {}
    pos = 68
    while pos + 4 <= len(body):
        itype, _, ilen = struct.unpack_from(">BBH", body, pos)
        ibody = body[pos + 4:pos + 4 + ilen]
        if itype == 0x21:
            cid, _, result, _ = struct.unpack_from(">BBBB", ibody, 0)
            ts = ""
            if len(ibody) > 8:
                _, _, slen = struct.unpack_from(">BBH", ibody, 4)
                ts = ibody[8:8 + slen].rstrip(b"\0 ").decode()
            out[cid] = (result, ts)
        pos += 4 + ilen
    return out


def pdv(context_id: int, is_command: bool, is_last: bool, data: bytes) -> bytes:
    header = (0x01 if is_command else 0) | (0x02 if is_last else 0)
    return struct.pack(">IBB", len(data) + 2, context_id, header) + data


def p_data(*pdvs: bytes) -> bytes:
    return pdu(P_DATA_TF, b"".join(pdvs))


def _el(group: int, elem: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", group, elem, len(value)) + value


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """Implicit VR LE command set with (0000,0000) group length; elements: (element, value)."""
    body = b"".join(_el(0, e, v) for e, v in sorted(elements))
    return _el(0, 0, struct.pack("<I", len(body))) + body


def us(v: int) -> bytes:
    return struct.pack("<H", v)


def echo_rq(msg_id: int = 1) -> bytes:
    return command_set([(0x0002, _uid(VERIFICATION)), (0x0100, us(0x0030)),
                        (0x0110, us(msg_id)), (0x0800, us(0x0101))])


def store_rq(sop_class: str, sop_uid: str, msg_id: int = 1) -> bytes:
    return command_set([(0x0002, _uid(sop_class)), (0x0100, us(0x0001)), (0x0110, us(msg_id)),
                        (0x0700, us(0)), (0x0800, us(0x0000)), (0x1000, _uid(sop_uid))])


def parse_command(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 8 <= len(data):
        g, e, ln = struct.unpack_from("<HHI", data, pos)
        out[e] = data[pos + 8:pos + 8 + ln]
        pos += 8 + ln
    return out


class RawAssociation:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 20.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.contexts: dict[int, tuple[int, str]] = {}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def read_pdu(self) -> tuple[int, bytes] | None:
        """Next PDU as (type, body); None when the peer closed the connection (or reset it)."""
        try:
            head = self._recv_exact(6)
            if head is None:
                return None
            ptype, _, length = struct.unpack(">BBI", head)
            if length > 64 * 1024 * 1024:
                raise AssertionError(f"peer sent a PDU of length {length}")
            body = self._recv_exact(length)
            return (ptype, body) if body is not None else None
        except (ConnectionResetError, BrokenPipeError):
            return None

    def associate(self, called: str, calling: str = "RAWDUL",
                  contexts=((1, VERIFICATION, [IMPLICIT_LE]),), max_pdu: int = 16384) -> int:
        self.send(associate_rq(called, calling, list(contexts), max_pdu))
        rsp = self.read_pdu()
        assert rsp is not None, "connection closed instead of A-ASSOCIATE-AC/RJ"
        if rsp[0] == A_ASSOCIATE_AC:
            self.contexts = parse_associate_ac(rsp[1])
        return rsp[0]

    def accepted(self, context_id: int) -> bool:
        return self.contexts.get(context_id, (1, ""))[0] == 0

    def read_message(self) -> tuple[dict[int, bytes], bytes]:
        """Read one DIMSE message: (command elements, data set bytes)."""
        cmd, data, cmd_done = b"", b"", False
        while True:
            rsp = self.read_pdu()
            assert rsp is not None, "connection closed while waiting for a DIMSE response"
            ptype, body = rsp
            assert ptype == P_DATA_TF, f"expected P-DATA-TF, got {PDU_NAMES.get(ptype, ptype)}"
            pos = 0
            while pos < len(body):
                ln, _cid, hdr = struct.unpack_from(">IBB", body, pos)
                frag = body[pos + 6:pos + 4 + ln]
                pos += 4 + ln
                if hdr & 1:
                    cmd += frag
                    if hdr & 2:
                        cmd_done = True
                else:
                    data += frag
                    if hdr & 2:
                        return parse_command(cmd), data
            if cmd_done:
                c = parse_command(cmd)
                if struct.unpack("<H", c.get(0x0800, b"\x01\x01"))[0] == 0x0101:
                    return c, data

    def status(self) -> int:
        c, _ = self.read_message()
        return struct.unpack("<H", c[0x0900])[0]

    def release(self) -> None:
        self.send(pdu(A_RELEASE_RQ, b"\0\0\0\0"))
        self.read_pdu()
        self.close()

    def wait_closed(self, timeout: float = 15.0) -> list[int]:
        """Read until the peer closes; return the types of PDUs received meanwhile."""
        seen, deadline = [], time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while time.monotonic() < deadline:
            try:
                rsp = self.read_pdu()
            except socket.timeout:
                break
            if rsp is None:
                return seen
            seen.append(rsp[0])
        raise AssertionError(f"peer did not close the connection within {timeout}s "
                             f"(PDUs received: {[PDU_NAMES.get(t, t) for t in seen]})")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
