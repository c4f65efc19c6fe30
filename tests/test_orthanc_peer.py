"""Orthanc (the Debian package) as a peer of a node, the way sites pair a PACS with an
archive: Orthanc echoes, stores, queries and retrieves (C-MOVE into itself) against the node
over DIMSE, and pulls a study from the node's DICOMweb with its DICOMweb client plugin.
What arrives on either side is the data that was sent."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
import requests

from harness import (HOST, RemoteAE, dataset_bytes, dcmtk, free_ports, instance_uids,
                     store_ok, terminate, wait_port)

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")



class Orthanc:
    """One Orthanc process on free ports with its own storage, knowing the node as `pacsgrid`."""

    def __init__(self, work: Path, node_dicom_port: int, node_http_port: int,
                 dicom_port: int, http_port: int):
        self.dicom_port, self.http_port = dicom_port, http_port
        self.url = f"http://{HOST}:{http_port}"
        work.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "peer", "DicomAet": "ORTHANC", "DicomPort": dicom_port,
            "HttpPort": http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"), "DicomCheckCalledAet": False,
            "DicomScuTimeout": 60, "StableAge": 1,
            "DicomModalities": {"pacsgrid": ["PACSGRID", HOST, node_dicom_port]},
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/",
                         "Servers": {"pacsgrid": [f"http://{HOST}:{node_http_port}/dicom-web/"]}},
        }
        self.config = work / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.log = open(work / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=self.log,
                                     stderr=self.log, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
        try:
            wait_port(http_port, timeout=60)
        except TimeoutError:
            self.stop()
            raise

    def get(self, path: str, **kw):
        r = requests.get(self.url + path, timeout=120, **kw)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:300]}"
        return r

    def post(self, path: str, body, **kw):
        data = body if isinstance(body, bytes) else json.dumps(body)
        r = requests.post(self.url + path, data=data, timeout=300, **kw)
        assert r.status_code == 200, f"POST {path}: {r.status_code} {r.text[:300]}"
        return r.json() if r.content else None

    def sop_uids(self) -> dict[str, str]:
        """SOPInstanceUID -> Orthanc instance ID of everything Orthanc holds."""
        out = {}
        for oid in self.get("/instances").json():
            tags = self.get(f"/instances/{oid}/simplified-tags").json()
            out[tags["SOPInstanceUID"]] = oid
        return out

    def stop(self):
        terminate(self.proc, grace=20)
        self.log.close()


@pytest.fixture(scope="module")
def pair(module_node_factory, corpora, tmp_path_factory):
    o_dicom, o_http = free_ports(2)
    node = module_node_factory(remote_aes=[RemoteAE("ORTHANC", o_dicom)])
    orthanc = Orthanc(tmp_path_factory.mktemp("orthanc"), node.dicom_port, node.http_port,
                      o_dicom, o_http)
    yield node, orthanc, corpora.native
    orthanc.stop()


def same_dataset(got: bytes, inst) -> bool:
    """The data set as the node or Orthanc gives it is the original's (same syntax here)."""
    return dataset_bytes(got) == inst.data


def test_orthanc_echoes_the_node(pair):
    node, orthanc, _ = pair
    orthanc.post("/modalities/pacsgrid/echo", {})


def test_orthanc_stores_to_the_node(pair):
    """Orthanc's C-STORE SCU (a PACS forwarding) to the node: every instance is found there
    and comes back byte for byte."""
    node, orthanc, native = pair
    study, insts = next(iter(native.studies().items()))
    ids = [orthanc.post("/instances", i.path.read_bytes())["ID"] for i in insts]
    job = orthanc.post("/modalities/pacsgrid/store", {"Resources": ids, "Synchronous": True})
    assert job is not None
    assert {i.sop_uid for i in insts} <= set(instance_uids(node))
    for i in insts[:3]:
        r = requests.get(
            f"http://{HOST}:{node.http_port}/wado",
            params={"requestType": "WADO", "studyUID": i.study_uid, "seriesUID": i.series_uid,
                    "objectUID": i.sop_uid, "contentType": "application/dicom",
                    "transferSyntax": "*"}, timeout=60)
        assert r.status_code == 200 and same_dataset(r.content, i), i.sop_uid


def test_orthanc_queries_and_moves_from_the_node(pair):
    """Orthanc's C-FIND SCU finds exactly the node's studies of a patient, and its C-MOVE
    ("retrieve" to itself) brings the study into Orthanc intact."""
    node, orthanc, native = pair
    studies = list(native.studies().items())
    study, insts = studies[-1]
    pid = insts[0].patient_id
    store_ok(node, [i.path for i in native.instances if i.patient_id == pid])
    want = {s for s, xs in studies if xs[0].patient_id == pid}
    q = orthanc.post("/modalities/pacsgrid/query",
                     {"Level": "Study", "Query": {"PatientID": pid, "StudyInstanceUID": ""}})
    answers = orthanc.get(f"/queries/{q['ID']}/answers?expand").json()
    got = {a["0020,000d"]["Value"] for a in answers}
    assert got == want
    k = next(n for n, a in enumerate(answers) if a["0020,000d"]["Value"] == study)
    orthanc.post(f"/queries/{q['ID']}/answers/{k}/retrieve",
                 {"TargetAet": "ORTHANC", "Synchronous": True})
    held = orthanc.sop_uids()
    for i in insts:
        assert i.sop_uid in held, f"{i.sop_uid} not moved into Orthanc"
        data = orthanc.get(f"/instances/{held[i.sop_uid]}/file").content
        assert same_dataset(data, i), i.sop_uid


def test_node_moves_to_orthanc_with_movescu(pair):
    """The other direction: a workstation asks the node to C-MOVE a series to Orthanc."""
    node, orthanc, native = pair
    series_uid, insts = list(native.series().items())[1]
    store_ok(node, [i.path for i in insts])
    r = dcmtk("movescu", "-v", "-S", "-aet", "MOVESCU", "-aec", node.ae_title, "-aem", "ORTHANC",
              "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={insts[0].study_uid}",
              "-k", f"SeriesInstanceUID={series_uid}", HOST, node.dicom_port, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Final Move Response (Success)" in out, out
    held = orthanc.sop_uids()
    assert {i.sop_uid for i in insts} <= set(held)


def test_orthanc_dicomweb_client_pulls_a_study_from_the_node(pair):
    """Orthanc's DICOMweb client (QIDO-RS search, WADO-RS retrieve) against the node."""
    node, orthanc, native = pair
    study, insts = list(native.studies().items())[0]
    store_ok(node, [i.path for i in insts])
    found = orthanc.post("/dicom-web/servers/pacsgrid/qido",
                         {"Uri": "/studies", "Arguments": {"StudyInstanceUID": study}})
    # Orthanc hands the answer on in its own JSON form: one value per tag, as a string
    assert [a["0020000D"]["Value"] for a in found] == [study]
    before = set(orthanc.sop_uids())
    for i in insts:  # start from an Orthanc without the study
        if i.sop_uid in before:
            requests.delete(f"{orthanc.url}/instances/{orthanc.sop_uids()[i.sop_uid]}",
                            timeout=60)
    orthanc.post("/dicom-web/servers/pacsgrid/retrieve",
                 {"Resources": [{"Study": study}], "Synchronous": True})
    held = orthanc.sop_uids()
    assert {i.sop_uid for i in insts} <= set(held)
    i = insts[0]
    data = orthanc.get(f"/instances/{held[i.sop_uid]}/file").content
    got = pydicom.dcmread(io.BytesIO(data))
    assert got.SOPInstanceUID == i.sop_uid and got.PixelData == pydicom.dcmread(i.path).PixelData
