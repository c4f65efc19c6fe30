"""DICOM over TLS (issue 5, "Who may connect"): dcmtk (`+tls`) and pynetdicom (`tls_args`) round
trips on the TLS port, client certificates required and verified, untrusted ones refused while
the node serves on, plain DICOM to the TLS port refused, the plain port kept or closed.

Certificates are made here with the openssl CLI: a CA, the node's certificate (localhost,
127.0.0.1), a client certificate from that CA, and a client certificate from a foreign CA.
"""
from __future__ import annotations

import re
import socket
import ssl
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import build_context, build_role, evt

import harness
from harness import (HOST, MODELS, PENDING, SUCCESS, Node, RemoteAE, StoreSCP, assert_identical,
                     c_move, dcmtk, free_ports, store_ok,
                     hexs, http_get, make_ae, query_dataset, status_of, store_contexts)
from pynetdicom.sop_class import Verification

OPENSSL = "/usr/bin/openssl"
CLIENT_CN = "modality-1"


# ----------------------------------------------------------------------------------- PKI
def openssl(*args, cwd: Path) -> None:
    r = subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                       timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(map(str, args))}:\n{r.stderr}"


def make_ca(d: Path, name: str, cn: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30", "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_leaf(d: Path, name: str, cn: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext + "\nbasicConstraints=CA:FALSE\n"
                                   "keyUsage=critical,digitalSignature,keyAgreement\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "30", "-extfile", f"{name}.ext",
            cwd=d)


class Pki:
    def __init__(self, d: Path):
        self.dir = d
        make_ca(d, "ca", "pacsgrid test CA")
        make_ca(d, "foreign-ca", "someone else's CA")
        make_leaf(d, "node", "localhost", "ca",
                  "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
        make_leaf(d, "client", CLIENT_CN, "ca", "extendedKeyUsage=clientAuth")
        make_leaf(d, "intruder", "intruder", "foreign-ca", "extendedKeyUsage=clientAuth")
        # C-MOVE over TLS: the node's certificate also serves as its client certificate, a
        # destination with a certificate of our CA, and one with a certificate of another
        make_leaf(d, "mover", "localhost", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                  "extendedKeyUsage=serverAuth,clientAuth")
        make_leaf(d, "dest", "workstation", "ca",
                  "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
        make_leaf(d, "forged-dest", "workstation", "foreign-ca",
                  "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")

    def __getattr__(self, name: str) -> Path:
        # pki.ca_pem, pki.client_key, ... -> the file
        stem, _, ext = name.rpartition("_")
        p = self.dir / f"{stem.replace('_', '-')}.{ext}"
        if not p.exists():
            raise AttributeError(name)
        return p

    def client_context(self, cert: str | None = "client") -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_pem))
        if cert is not None:
            ctx.load_cert_chain(str(self.dir / f"{cert}.pem"), str(self.dir / f"{cert}.key"))
        return ctx

    def dcmtk_tls(self, cert: str = "client") -> list[str]:
        """dcmtk options: our certificate and key, and the CA that the node must chain to."""
        return ["+tls", self.dir / f"{cert}.key", self.dir / f"{cert}.pem", "+cf", self.ca_pem]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_node(factory, pki: Pki, *, client_ca: bool = True, plain: bool = True,
             key: Path | None = None, cert: Path | None = None, start: bool = True,
             **kw) -> Node:
    node = factory(start=False, dicom={"plain": "true" if plain else "false"}, **kw)
    node.tls_port = free_ports(1)[0]
    lines = ["", "[dicom.tls]", f"port = {node.tls_port}",
             f"cert = {harness.toml_str(cert or pki.node_pem)}",
             f"key = {harness.toml_str(key or pki.node_key)}"]
    if client_ca:
        lines.append(f"client_ca = {harness.toml_str(pki.ca_pem)}")
    with open(node.config_path, "a") as f:
        f.write("\n".join(lines) + "\n")
    if start:
        node.start()
    return node


@pytest.fixture(scope="module")
def node(module_node_factory, pki) -> Node:
    """TLS port with client certificates required, plain port kept."""
    return tls_node(module_node_factory, pki)


def metric(node: Node, name: str) -> float:
    status, _, body = http_get(node.http_port, "/metrics")
    assert status == 200
    m = re.search(rf"^{name} (\S+)$", body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


# ----------------------------------------------------------------------------------- clients
def tls_echo(node: Node, pki: Pki, cert: str = "client", port: int | None = None):
    return dcmtk("echoscu", "-to", "15", *pki.dcmtk_tls(cert), "-aec", node.ae_title, HOST,
                 port or node.tls_port, timeout=60)


def tls_associate(node: Node, ctx: ssl.SSLContext, contexts, roles=None, handlers=None):
    ae = make_ae("PYTLS")
    ae.requested_contexts = contexts
    assoc = ae.associate(HOST, node.tls_port, ae_title=node.ae_title, ext_neg=roles or [],
                         evt_handlers=handlers or [], tls_args=(ctx, "localhost"))
    return ae, assoc


def tls_cget(node: Node, pki: Pki, insts) -> dict[str, bytes]:
    """C-GET every study of `insts` over TLS with pynetdicom, each instance in its stored
    transfer syntax -> {SOPInstanceUID: data set bytes as received}."""
    received: dict[str, bytes] = {}

    def on_store(event):
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    get_model = MODELS["study"][1]
    ctxs = [build_context(get_model)] + store_contexts((i.sop_class, i.ts) for i in insts)
    roles = [build_role(c, scp_role=True) for c in {i.sop_class for i in insts}]
    ae, assoc = tls_associate(node, pki.client_context(), ctxs, roles,
                              [(evt.EVT_C_STORE, on_store)])
    try:
        assert assoc.is_established, "C-GET association over TLS refused"
        for study in {i.study_uid for i in insts}:
            last = None
            for status, _ in assoc.send_c_get(
                    query_dataset("STUDY", {"StudyInstanceUID": study}), get_model):
                last = status_of(status)
            assert last == SUCCESS, f"C-GET over TLS: {hexs(last)}"
        assoc.release()
    finally:
        ae.shutdown()
    return received


# ----------------------------------------------------------------------------------- tests
def test_dcmtk_round_trip_over_tls(node, pki, corpora, tmp_path):
    """echoscu, storescu and findscu with `+tls KEY CERT +cf CA`; the stored bytes come back
    identical over TLS."""
    insts = corpora.native.instances
    r = tls_echo(node, pki)
    assert r.returncode == 0, f"echoscu +tls failed:\n{r.stdout}\n{r.stderr}"

    r = dcmtk("storescu", "-to", "30", *pki.dcmtk_tls(), "-aec", node.ae_title, "+sd", "+r",
              "+sp", "*.dcm", HOST, node.tls_port, corpora.native.root, timeout=180)
    assert r.returncode == 0, f"storescu +tls failed:\n{r.stdout}\n{r.stderr}"

    fdir = tmp_path / "find"
    fdir.mkdir()
    r = dcmtk("findscu", "-S", *pki.dcmtk_tls(), "-aec", node.ae_title, "-X", "-od", fdir,
              "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={insts[0].study_uid}",
              "-k", "SeriesInstanceUID=", "-k", "SOPInstanceUID=", HOST, node.tls_port,
              timeout=60)
    assert r.returncode == 0, f"findscu +tls failed:\n{r.stdout}\n{r.stderr}"
    found = {str(pydicom.dcmread(p).SOPInstanceUID) for p in fdir.glob("rsp*.dcm")}
    assert found == {i.sop_uid for i in insts}

    # dcmtk 3.6.7's getscu and movescu have no TLS: the retrieve over TLS is pynetdicom's.
    # storescu sends the implicit VR files as explicit VR (its default proposal): those come
    # back with the same content; the explicit VR ones byte for byte.
    got = tls_cget(node, pki, insts)
    assert set(got) == {i.sop_uid for i in insts}
    explicit = [i for i in insts if i.ts == pydicom.uid.ExplicitVRLittleEndian]
    assert explicit and all(got[i.sop_uid] == i.data for i in explicit)
    for i in insts:
        harness.assert_same_content(i, got[i.sop_uid], pydicom.uid.ExplicitVRLittleEndian,
                                    "C-GET over TLS of what storescu +tls sent")

    log = node.log_text()
    assert re.search(r"association accepted.*tls=true.*peer_certificate=\"?" + CLIENT_CN, log), \
        "the client certificate's CN is not on the association"


def test_pynetdicom_store_find_get_over_tls(node, pki, corpora):
    insts = corpora.issuers.instances
    ctx = pki.client_context()
    ae, assoc = tls_associate(node, ctx, store_contexts((i.sop_class, i.ts) for i in insts))
    try:
        assert assoc.is_established, "TLS association with a trusted client certificate refused"
        for i in insts:
            s = status_of(assoc.send_c_store(i.path))
            assert s == SUCCESS, f"C-STORE over TLS: {hexs(s)}"
        assoc.release()
    finally:
        ae.shutdown()

    find_model = MODELS["study"][0]
    ae, assoc = tls_associate(node, ctx, [build_context(find_model)])
    try:
        assert assoc.is_established
        studies = set()
        for pid in {i.patient_id for i in insts}:
            ds = query_dataset("STUDY", {"PatientID": pid, "StudyInstanceUID": ""})
            for status, ident in assoc.send_c_find(ds, find_model):
                if status_of(status) in PENDING and ident is not None:
                    studies.add(str(ident.StudyInstanceUID))
                else:
                    assert status_of(status) == SUCCESS, hexs(status_of(status))
        assoc.release()
    finally:
        ae.shutdown()
    assert studies == {i.study_uid for i in insts}

    assert_identical({i.sop_uid: i.data for i in insts}, tls_cget(node, pki, insts),
                     "C-GET over TLS")


def test_untrusted_client_certificate_is_refused_and_the_node_serves_on(node, pki):
    failed_before = metric(node, "pacsgrid_dimse_tls_handshakes_failed_total")
    r = tls_echo(node, pki, cert="intruder")
    assert r.returncode != 0, "a certificate from a foreign CA was accepted"

    ae, assoc = tls_associate(node, pki.client_context("intruder"), [build_context(Verification)])
    try:
        assert not assoc.is_established, "pynetdicom with a foreign certificate got in"
    finally:
        ae.shutdown()
    ae, assoc = tls_associate(node, pki.client_context(None), [build_context(Verification)])
    try:
        assert not assoc.is_established, "a client without a certificate got in"
    finally:
        ae.shutdown()

    r = tls_echo(node, pki)
    assert r.returncode == 0, f"the next trusted client failed:\n{r.stdout}\n{r.stderr}"
    assert metric(node, "pacsgrid_dimse_tls_handshakes_failed_total") >= failed_before + 3
    refusals = [line for line in node.log_text().splitlines() if "TLS handshake refused" in line]
    assert refusals and all("WARN" in line and "peer=127.0.0.1:" in line for line in refusals)
    assert any(re.search(r"UnknownIssuer|certificate", line, re.I) for line in refusals), refusals
    # and each refused handshake is in the audit trail as a node-authentication alert
    audit = harness.run_pacsgrid(["audit", "search", "--data", node.data_dir, "--json",
                                  "--event", "security-alert", "--xml"])
    alerts = [line for line in audit.stdout.splitlines() if "TLS handshake failed" in line]
    assert len(alerts) >= 3, audit.stdout[-2000:]
    assert all("110126" in a for a in alerts)  # DCM 110126 Node Authentication


def test_plain_dicom_to_the_tls_port_fails_cleanly(node, pki):
    r = dcmtk("echoscu", "-to", "10", "-ta", "10", "-aec", node.ae_title, HOST, node.tls_port,
              timeout=60)
    assert r.returncode != 0, "plain DICOM was served on the TLS port"
    # raw A-ASSOCIATE-RQ bytes: the node answers with a TLS alert (or nothing) and closes
    with socket.create_connection((HOST, node.tls_port), timeout=10) as s:
        s.sendall(bytes([0x01, 0, 0, 0, 0, 0x44]) + b"\0" * 0x44)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert not data or data[0] == 0x15, f"expected a TLS alert or a close, got {data[:16]!r}"
    assert tls_echo(node, pki).returncode == 0
    assert any("TLS handshake refused" in line and "corrupt" in line.lower()
               for line in node.log_text().splitlines())


def test_plain_port_kept_beside_tls(node, corpora):
    r = dcmtk("echoscu", "-aec", node.ae_title, HOST, node.dicom_port, timeout=60)
    assert r.returncode == 0, r.stderr
    inst = corpora.native.instances[0]
    r = dcmtk("storescu", "-aec", node.ae_title, HOST, node.dicom_port, inst.path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"dicom=127\.0\.0\.1:\d+ dicom_tls=127\.0\.0\.1:\d+", node.log_text())


def test_plain_false_closes_the_plain_port(node_factory, pki):
    node = tls_node(node_factory, pki, plain=False)
    with pytest.raises(OSError):
        socket.create_connection((HOST, node.dicom_port), timeout=5).close()
    assert tls_echo(node, pki).returncode == 0
    assert re.search(r"dicom=off dicom_tls=127\.0\.0\.1:\d+", node.log_text())


def test_server_only_tls_without_client_certificates(node_factory, pki):
    node = tls_node(node_factory, pki, client_ca=False, plain=False)
    r = dcmtk("echoscu", "+tla", "+cf", pki.ca_pem, "-aec", node.ae_title, HOST, node.tls_port,
              timeout=60)
    assert r.returncode == 0, f"anonymous TLS client refused:\n{r.stdout}\n{r.stderr}"
    ae, assoc = tls_associate(node, pki.client_context(None), [build_context(Verification)])
    try:
        assert assoc.is_established
        assert status_of(assoc.send_c_echo()) == SUCCESS
        assoc.release()
    finally:
        ae.shutdown()


@pytest.mark.parametrize("case", ["wrong key", "missing certificate"])
def test_bad_tls_files_refuse_start(node_factory, pki, case):
    if case == "wrong key":
        node = tls_node(node_factory, pki, key=pki.client_key, start=False)
        expect = ["does not match", str(pki.client_key)]
    else:
        node = tls_node(node_factory, pki, cert=pki.dir / "nowhere.pem", start=False)
        expect = ["nowhere.pem"]
    node.start(wait=False)
    assert node.proc.wait(timeout=60) != 0, "the node started with bad TLS files"
    log = node.log_text()
    assert "[dicom.tls]" in log and all(e in log for e in expect), node.log_tail(20)


def test_cmove_to_a_tls_destination(node_factory, pki, corpora, tmp_path):
    """A [[remote_ae]] with `tls_ca` is reached over DICOM TLS: a dcmtk storescp that demands
    a client certificate gets the study byte for byte; a destination whose certificate is not
    from the trusted CA gets nothing, the C-MOVE fails with a clear reason and the node serves
    on."""
    good = StoreSCP(tmp_path / "good", "SECURE_WS", extra=[
        "+tls", pki.dest_key, pki.dest_pem, "-rc", "+cf", pki.ca_pem]).start()
    forged = StoreSCP(tmp_path / "forged", "FORGED_WS", extra=[
        "+tls", pki.forged_dest_key, pki.forged_dest_pem, "-ic"]).start()
    try:
        node = tls_node(node_factory, pki, cert=pki.mover_pem, key=pki.mover_key, remote_aes=[
            RemoteAE("SECURE_WS", good.port, tls_ca=pki.ca_pem),
            RemoteAE("FORGED_WS", forged.port, tls_ca=pki.ca_pem)])
        study_uid, insts = next(iter(corpora.native.studies().items()))
        store_ok(node, insts)

        res = c_move(node, "STUDY", {"StudyInstanceUID": study_uid}, "SECURE_WS")
        assert res.status == SUCCESS, f"C-MOVE over TLS: {hexs(res.status)} {res.final}"
        assert res.count("NumberOfCompletedSuboperations") == len(insts), res.final
        assert_identical({i.sop_uid: i.data for i in insts}, good.received(),
                         "C-MOVE to a TLS destination")
        # storescp saw a TLS association carrying the node's certificate
        assert "TLS" in good.log_path.read_text(errors="replace")

        res = c_move(node, "STUDY", {"StudyInstanceUID": study_uid}, "FORGED_WS")
        assert res.status not in (SUCCESS, None), res.final
        assert res.count("NumberOfFailedSuboperations") == len(insts), res.final
        assert forged.received() == {}
        assert "TLS handshake failed" in node.log_text(), node.log_tail(20)
        r = dcmtk("echoscu", "-aec", node.ae_title, HOST, node.dicom_port, timeout=30)
        assert r.returncode == 0, "the node stopped serving after a refused destination"
    finally:
        good.stop()
        forged.stop()


def test_bad_destination_ca_refuses_start(node_factory, pki):
    node = tls_node(node_factory, pki, start=False, remote_aes=[
        RemoteAE("SECURE_WS", 1, tls_ca=pki.dir / "no-such-ca.pem")])
    node.start(wait=False)
    assert node.proc.wait(timeout=60) != 0, "the node started with a missing destination CA"
    log = node.log_text()
    assert "SECURE_WS" in log and "no-such-ca.pem" in log, node.log_tail(20)
