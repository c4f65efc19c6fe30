"""STOW-RS: dicomweb-client and requests against a real node. What STOW-RS stores is found by
dcmtk findscu (C-FIND) and retrieved by C-GET byte-identical to what was uploaded; duplicates,
quarantine, broken parts, media types, size limits and study mismatches."""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from harness import (HOST, SUCCESS, c_get, dataset_bytes, dcmtk, echo, find_sop,
                     instance_uids)

DICOM_JSON = "application/dicom+json"
PROBLEM_JSON = "application/problem+json"
RELATED = 'multipart/related; type="application/dicom"; boundary="{b}"'
BOUNDARY = "pacsgrid-test-boundary-7f3a"

WARNING_B000 = 0xB000
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900


def base(node) -> str:
    return f"http://{HOST}:{node.http_port}/dicom-web"


def client(node) -> DICOMwebClient:
    return DICOMwebClient(url=base(node))


def as_uploaded(path: Path) -> bytes:
    """The bytes dicomweb-client sends for a file: it re-encodes the data set with
    pydicom.dcmwrite, which is not always the file's bytes (deflate is compressed again)."""
    b = BytesIO()
    pydicom.dcmwrite(b, pydicom.dcmread(path))
    return b.getvalue()


def multipart(parts: list[bytes], content_types: list[str | None] | None = None) -> bytes:
    out = b""
    for n, p in enumerate(parts):
        ct = "application/dicom" if content_types is None else content_types[n]
        out += f"\r\n--{BOUNDARY}\r\n".encode()
        if ct is not None:
            out += f"Content-Type: {ct}\r\n".encode()
        out += b"\r\n" + p
    return out + f"\r\n--{BOUNDARY}--\r\n".encode()


def post(node, parts_or_body, path="/studies", content_type=None, headers=None
         ) -> requests.Response:
    """POST a list of parts (made a multipart body), raw bytes or a generator (chunked)."""
    body = parts_or_body if isinstance(parts_or_body, (bytes, bytearray)) or callable(
        getattr(parts_or_body, "__next__", None)) else multipart(parts_or_body)
    h = {"Content-Type": content_type or RELATED.format(b=BOUNDARY), **(headers or {})}
    return requests.post(base(node) + path, data=body, timeout=120, headers=h)


def seq(js: dict, tag: str) -> list[dict]:
    return js.get(tag, {}).get("Value", [])


def val(item: dict, tag: str):
    v = item.get(tag, {}).get("Value")
    return v[0] if v else None


def findscu_uids(node, study_uid: str, outdir: Path) -> set[str]:
    """SOP Instance UIDs of a study by dcmtk findscu (IMAGE level, responses written as files)."""
    outdir.mkdir(parents=True, exist_ok=True)
    r = dcmtk("findscu", "-S", "-aet", "FINDSCU", "-aec", node.ae_title, "-X", "-od", outdir,
              "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study_uid}",
              "-k", "SOPInstanceUID", HOST, node.dicom_port, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return {str(pydicom.dcmread(p).SOPInstanceUID) for p in sorted(outdir.glob("*.dcm"))}


# --------------------------------------------------------------------------- cross-protocol
@pytest.fixture(scope="module")
def stowed(module_node_factory, corpora):
    """A node that received the mixed corpus (every transfer syntax) by dicomweb-client."""
    node = module_node_factory()
    corpus = corpora.mixed
    datasets = [pydicom.dcmread(p) for p in corpus.paths]
    response = client(node).store_instances(datasets)
    uploaded = {i.sop_uid: as_uploaded(i.path) for i in corpus.instances}
    return node, corpus, response, uploaded


def test_stow_response_lists_every_instance(stowed):
    node, corpus, rsp, _ = stowed
    assert "FailedSOPSequence" not in rsp, rsp
    refs = {str(i.ReferencedSOPInstanceUID): i for i in rsp.ReferencedSOPSequence}
    assert set(refs) == {i.sop_uid for i in corpus.instances}
    for inst in corpus.instances:
        item = refs[inst.sop_uid]
        assert str(item.ReferencedSOPClassUID) == inst.sop_class
        assert "WarningReason" not in item
        assert item.RetrieveURL == (f"{base(node)}/studies/{inst.study_uid}/series/"
                                    f"{inst.series_uid}/instances/{inst.sop_uid}")
    # Several studies in one request: no single study URL at the top.
    assert "RetrieveURL" not in rsp


def test_stowed_instances_found_by_findscu(stowed, tmp_path):
    node, corpus, _, _ = stowed
    for n, (study_uid, insts) in enumerate(corpus.studies().items()):
        got = findscu_uids(node, study_uid, tmp_path / f"s{n}")
        assert got == {i.sop_uid for i in insts}, f"findscu study {study_uid}"


def test_stowed_instances_retrieved_by_cget_as_uploaded(stowed):
    node, corpus, _, uploaded = stowed
    for study_uid, insts in corpus.studies().items():
        res = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
        assert res.status == SUCCESS, f"C-GET {study_uid}: 0x{res.status or 0:04X}"
        for i in insts:
            assert i.sop_uid in res.received, f"{i.sop_uid} not retrieved"
            assert res.transfer_syntaxes[i.sop_uid] == i.ts, i.sop_uid
            assert res.received[i.sop_uid] == dataset_bytes(uploaded[i.sop_uid]), (
                f"{i.sop_uid} ({i.ts}) retrieved with other bytes than uploaded")


def test_same_instances_again_are_warned_duplicates(stowed):
    node, corpus, _, uploaded = stowed
    inst = corpus.instances[0]
    r = post(node, [uploaded[inst.sop_uid]])
    assert r.status_code == 202, r.text
    assert r.headers["Content-Type"] == DICOM_JSON
    refs = seq(r.json(), "00081199")
    assert [val(i, "00081155") for i in refs] == [inst.sop_uid]
    assert val(refs[0], "00081196") == WARNING_B000
    assert find_sop(node, inst) == 1
    assert sorted(instance_uids(node)) == sorted(i.sop_uid for i in corpus.instances)


# --------------------------------------------------------------------------- one node per test
def native_bytes(corpora, n=2) -> list[tuple[object, bytes]]:
    return [(i, i.path.read_bytes()) for i in corpora.native.instances[:n]]


def test_different_object_under_a_stored_uid_is_quarantined(node, corpora, tmp_path):
    (inst, data), = native_bytes(corpora, 1)
    assert post(node, [data]).status_code == 200
    ds = pydicom.dcmread(inst.path)
    ds.InstitutionName = "Another Hospital"
    changed = BytesIO()
    ds.save_as(changed, enforce_file_format=True)
    r = post(node, [changed.getvalue()])
    assert r.status_code == 202, r.text
    item, = seq(r.json(), "00081199")
    assert val(item, "00081155") == inst.sop_uid
    assert val(item, "00081196") == WARNING_B000
    assert "00081198" not in r.json()
    got = c_get(node, "IMAGE", {"StudyInstanceUID": inst.study_uid,
                                "SeriesInstanceUID": inst.series_uid,
                                "SOPInstanceUID": inst.sop_uid})
    assert got.received == {inst.sop_uid: dataset_bytes(data)}, "the first object must stay"


def test_truncated_and_non_dicom_parts_fail_alone(node, corpora):
    (a, da), (b, db) = native_bytes(corpora, 2)
    trunc_inst = corpora.native.instances[2]
    truncated = trunc_inst.path.read_bytes()[:-4000]
    r = post(node, [da, truncated, b"%PDF-1.4 certainly not DICOM", db])
    assert r.status_code == 202, r.text
    js = r.json()
    failed = seq(js, "00081198")
    assert len(failed) == 2, js
    assert val(failed[0], "00081155") == trunc_inst.sop_uid
    assert val(failed[0], "00081150") == trunc_inst.sop_class
    assert [val(f, "00081197") for f in failed] == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    assert val(failed[1], "00081155") is None
    assert [val(i, "00081155") for i in seq(js, "00081199")] == [a.sop_uid, b.sop_uid]
    # Nothing of the broken parts is kept, and the node keeps serving.
    assert find_sop(node, trunc_inst) == 0
    assert echo(node) == SUCCESS
    assert post(node, [trunc_inst.path.read_bytes()]).status_code == 200
    assert find_sop(node, trunc_inst) == 1


def test_only_failures_is_409(node):
    r = post(node, [b"not dicom", b"neither"])
    assert r.status_code == 409, r.text
    assert r.headers["Content-Type"] == DICOM_JSON
    assert [val(f, "00081197") for f in seq(r.json(), "00081198")] == [CANNOT_UNDERSTAND] * 2


def test_single_application_dicom_body(node, corpora):
    (inst, data), = native_bytes(corpora, 1)
    r = post(node, data, content_type="application/dicom")
    assert r.status_code == 200, r.text
    assert val(seq(r.json(), "00081199")[0], "00081155") == inst.sop_uid
    assert val(r.json(), "00081190") == f"{base(node)}/studies/{inst.study_uid}"


@pytest.mark.parametrize("content_type", [
    None,
    "application/json",
    'multipart/related; type="application/dicom+json"; boundary="b"',
    'multipart/related; type="application/dicom+xml"; boundary="b"',
    "multipart/form-data; boundary=b",
])
def test_wrong_content_type_is_415(node, corpora, content_type):
    (_, data), = native_bytes(corpora, 1)
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = requests.post(base(node) + "/studies", data=multipart([data]), headers=headers,
                      timeout=30)
    assert r.status_code == 415, r.text
    assert r.headers["Content-Type"] == PROBLEM_JSON
    problem = r.json()
    assert problem["status"] == 415
    assert 'type="application/dicom"' in problem["detail"]
    assert instance_uids(node) == []


def test_accept_without_dicom_json_is_406(node, corpora):
    (inst, data), = native_bytes(corpora, 1)
    r = post(node, [data], headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406, r.text
    assert r.headers["Content-Type"] == PROBLEM_JSON
    assert find_sop(node, inst) == 0
    r = post(node, [data], headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text


def test_unparsable_multipart_is_400(node, corpora):
    (_, data), = native_bytes(corpora, 1)
    r = post(node, data, content_type='multipart/related; type="application/dicom"')
    assert r.status_code == 400, r.text
    assert "boundary" in r.json()["detail"]
    r = post(node, b"no delimiter anywhere in this body")
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"] == PROBLEM_JSON


def test_study_in_url_refuses_other_studies(node, corpora):
    insts = corpora.native.instances
    other = corpora.mixed.instances[0]
    assert other.study_uid != insts[0].study_uid
    r = post(node, [insts[0].path.read_bytes(), other.path.read_bytes()],
             path=f"/studies/{insts[0].study_uid}")
    assert r.status_code == 202, r.text
    js = r.json()
    failed, = seq(js, "00081198")
    assert val(failed, "00081155") == other.sop_uid
    assert val(failed, "00081197") == DOES_NOT_MATCH
    assert [val(i, "00081155") for i in seq(js, "00081199")] == [insts[0].sop_uid]
    assert val(js, "00081190") == f"{base(node)}/studies/{insts[0].study_uid}"
    assert find_sop(node, other) == 0
    r = post(node, [other.path.read_bytes()], path=f"/studies/{insts[0].study_uid}")
    assert r.status_code == 409, r.text
    r = post(node, [other.path.read_bytes()], path="/studies/not-a-uid")
    assert r.status_code == 400, r.text


# --------------------------------------------------------------------------- size limit
LIMIT = 300_000


@pytest.fixture
def small_node(node_factory):
    node = node_factory(start=False)
    node.config_path.write_text(node.config_path.read_text() + f"max_upload_bytes = {LIMIT}\n")
    return node.start()


def test_oversized_body_is_413(small_node, corpora):
    node = small_node
    big = [i for i in corpora.mixed.instances if i.path.stat().st_size > LIMIT][0]
    data = big.path.read_bytes()
    r = post(node, [data])
    assert r.status_code == 413, r.text
    assert r.headers["Content-Type"] == PROBLEM_JSON
    assert str(LIMIT) in r.json()["detail"]
    # Chunked, without Content-Length: refused while streaming.
    body = multipart([data])
    r = post(node, (body[i:i + 65536] for i in range(0, len(body), 65536)))
    assert r.status_code == 413, r.text
    assert find_sop(node, big) == 0
    # Under the limit it works.
    (inst, small), = native_bytes(corpora, 1)
    assert len(small) < LIMIT
    assert post(node, [small]).status_code == 200


# --------------------------------------------------------------------------- bounded memory
def peak_rss_kib(node) -> int:
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_large_upload_streams_in_bounded_memory(node, corpora):
    """A 256 MiB object, sent chunked from a generator (never whole in the client either):
    stored, and the node's peak RSS grows by far less than the object."""
    frames, rows, cols = 512, 512, 512
    ds = pydicom.dcmread(corpora.native.instances[0].path)
    del ds.PixelData
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    head = BytesIO()
    ds.save_as(head, enforce_file_format=True)
    pixel_len = frames * rows * cols * 2
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_len.to_bytes(4, "little")
    frame = bytes(range(256)) * (rows * cols * 2 // 256)

    def body():
        yield f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield head.getvalue() + pixel_header
        for _ in range(frames):
            yield frame
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    before = peak_rss_kib(node)
    r = post(node, body())
    assert r.status_code == 200, r.text
    assert val(seq(r.json(), "00081199")[0], "00081155") == ds.SOPInstanceUID
    grown_mib = (peak_rss_kib(node) - before) / 1024
    assert grown_mib < 64, f"peak RSS grew by {grown_mib:.0f} MiB for a 256 MiB upload"
