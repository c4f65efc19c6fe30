"""WADO-RS against a real node: dicomweb-client and requests retrieve studies, series,
instances, metadata, frames and bulk data of a mixed corpus (seven transfer syntaxes) plus
multi-frame and JPEG baseline objects made here."""
from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGLSLossless, RLELossless, generate_uid)

import harness
from harness import Corpus, Inst, dataset_bytes, multipart_parts, reference_pixels

EVRLE = str(ExplicitVRLittleEndian)
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
PROBLEM = "application/problem+json"


# ----------------------------------------------------------------------------------- helpers
def assert_problem(rsp: requests.Response, status: int, *words: str) -> dict:
    assert rsp.status_code == status, (rsp.status_code, rsp.text[:500])
    assert rsp.headers["Content-Type"] == PROBLEM, rsp.headers
    body = rsp.json()
    assert body["status"] == status
    for w in words:
        assert w in body["detail"], f"{w!r} not in detail {body['detail']!r}"
    return body


# ----------------------------------------------------------------------------------- fixtures
def make_multiframe(src: Inst, out: Path) -> tuple[Path, Path]:
    """A 3-frame MR (explicit VR LE) with a 3000-byte private OB value, and its RLE copy."""
    ds = pydicom.dcmread(src.path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    frame = ds.pixel_array.astype(np.uint16)
    frames = np.stack([frame, (frame + 100) & 0x0FFF, (frame // 2)])
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    ds.SOPInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.10.1082.")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SeriesInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.10.1082.")
    ds.StudyInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.10.1082.")
    block = ds.private_block(0x0009, "PACSGRID TEST", create=True)
    block.add_new(0x01, "OB", bytes(range(256)) * 11 + b"\x01\x02" * 92)  # 3000 bytes
    native = out / "multiframe-native.dcm"
    out.mkdir(parents=True, exist_ok=True)
    ds.save_as(native, enforce_file_format=True)
    rle = pydicom.dcmread(native)
    rle.SOPInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.10.1082.")
    rle.file_meta.MediaStorageSOPInstanceUID = rle.SOPInstanceUID
    rle.compress(RLELossless)
    rle_path = out / "multiframe-rle.dcm"
    rle.save_as(rle_path, enforce_file_format=True)
    return native, rle_path


@pytest.fixture(scope="module")
def loaded(module_node_factory, corpora, tmp_path_factory):
    """A node holding the mixed corpus, two multi-frame objects and a JPEG baseline image."""
    node = module_node_factory()
    mixed = corpora.mixed
    extra_dir = tmp_path_factory.mktemp("wado-extra")
    mr = next(i for i in mixed.instances if i.modality == "MR" and i.ts == EVRLE)
    native, rle = make_multiframe(mr, extra_dir)
    jpeg = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    extras = Corpus(extra_dir, [Inst.read(p) for p in (native, rle, jpeg)])
    harness.store_ok(node, mixed.instances + extras.instances)
    client = DICOMwebClient(url=f"http://{harness.HOST}:{node.http_port}/dicom-web")
    return {"node": node, "mixed": mixed, "native_mf": extras.instances[0],
            "rle_mf": extras.instances[1], "jpeg": extras.instances[2], "client": client,
            "base": f"http://{harness.HOST}:{node.http_port}/dicom-web"}


def study_url(base, i: Inst) -> str:
    return f"{base}/studies/{i.study_uid}"


def instance_url(base, i: Inst) -> str:
    return f"{base}/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"


def studies_without(mixed: Corpus, ts: str) -> dict[str, list[Inst]]:
    return {s: insts for s, insts in mixed.studies().items() if all(i.ts != ts for i in insts)}


# ----------------------------------------------------------------------------------- retrieve
def test_study_as_stored_is_byte_identical_with_exact_content_types(loaded):
    """transfer-syntax=*: every instance of every study comes back with the data set bytes it
    was stored with, each part labelled with its own transfer syntax."""
    for study, insts in loaded["mixed"].studies().items():
        rsp = requests.get(f"{loaded['base']}/studies/{study}", headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert rsp.status_code == 200, rsp.text
        boundary, parts = multipart_parts(rsp)
        assert rsp.headers["Content-Type"] == (
            f'multipart/related; type="application/dicom"; boundary={boundary}')
        by_uid = {i.sop_uid: i for i in insts}
        got = {}
        for headers, content in parts:
            ds = pydicom.dcmread(BytesIO(content), stop_before_pixels=True)
            uid = str(ds.SOPInstanceUID)
            assert headers["content-type"] == (
                f"application/dicom; transfer-syntax={by_uid[uid].ts}")
            assert str(ds.file_meta.TransferSyntaxUID) == by_uid[uid].ts
            got[uid] = dataset_bytes(content)
        harness.assert_identical({u: i.data for u, i in by_uid.items()}, got,
                                 f"WADO-RS study {study} as stored")


def test_dicomweb_client_study_series_instance_as_stored(loaded):
    client, mixed = loaded["client"], loaded["mixed"]
    star = (("application/dicom", "*"),)
    study, insts = next(iter(mixed.studies().items()))
    got = client.retrieve_study(study, media_types=star)
    assert {str(d.SOPInstanceUID) for d in got} == {i.sop_uid for i in insts}
    for series, sinsts in mixed.series().items():
        got = client.retrieve_series(sinsts[0].study_uid, series, media_types=star)
        assert sorted(str(d.SOPInstanceUID) for d in got) == sorted(i.sop_uid for i in sinsts)
        for d in got:
            orig = mixed.by_uid[str(d.SOPInstanceUID)]
            assert str(d.file_meta.TransferSyntaxUID) == orig.ts
    # retrieve_instance's default is transfer-syntax=*: the object exactly as stored
    for i in mixed.instances[:8]:
        d = client.retrieve_instance(i.study_uid, i.series_uid, i.sop_uid)
        assert str(d.file_meta.TransferSyntaxUID) == i.ts
        assert d == pydicom.dcmread(i.path)


def test_dicomweb_client_default_study_is_explicit_vr_little_endian(loaded, tmp_path):
    """Without a transfer-syntax the default is Explicit VR Little Endian (PS3.18 8.7.3):
    uncompressed objects converted, RLE / JPEG 2000 / JPEG lossless decoded, pixels equal."""
    client, mixed = loaded["client"], loaded["mixed"]
    studies = studies_without(mixed, str(JPEGLSLossless))
    assert studies, "every mixed study holds a JPEG-LS instance"
    seen_ts = set()
    for study, insts in studies.items():
        got = client.retrieve_study(study)
        assert len(got) == len(insts)
        for d in got:
            orig = mixed.by_uid[str(d.SOPInstanceUID)]
            seen_ts.add(orig.ts)
            assert str(d.file_meta.TransferSyntaxUID) == EVRLE
            assert np.array_equal(d.pixel_array, reference_pixels(orig, tmp_path)), orig.ts
    assert len(seen_ts) >= 3, seen_ts


def test_jpeg_ls_study_by_default_is_406_naming_the_syntax(loaded):
    mixed = loaded["mixed"]
    jls = next(i for i in mixed.instances if i.ts == str(JPEGLSLossless))
    rsp = requests.get(study_url(loaded["base"], jls),
                       headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert_problem(rsp, 406, "JPEG-LS", str(JPEGLSLossless), jls.sop_uid, "transfer-syntax=*")
    # the same study with a fallback to the stored syntax works
    rsp = requests.get(study_url(loaded["base"], jls), headers={
        "Accept": 'multipart/related; type="application/dicom", '
                  'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5'})
    assert rsp.status_code == 200
    _, parts = multipart_parts(rsp)
    tss = {h["content-type"] for h, _ in parts}
    assert f"application/dicom; transfer-syntax={JPEGLSLossless}" in tss
    assert f"application/dicom; transfer-syntax={EVRLE}" in tss
    assert len(parts) == len(mixed.studies()[jls.study_uid])


def test_jpeg_baseline_as_explicit_vr_is_decoded(loaded):
    """A JPEG baseline (YBR_FULL) object asked as Explicit VR Little Endian comes back
    uncompressed, RGB, interleaved, with pixels close to pydicom's decoding of the original."""
    j = loaded["jpeg"]
    rsp = requests.get(instance_url(loaded["base"], j), headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}'})
    assert rsp.status_code == 200, rsp.text
    _, parts = multipart_parts(rsp)
    assert len(parts) == 1
    assert parts[0][0]["content-type"] == f"application/dicom; transfer-syntax={EVRLE}"
    d = pydicom.dcmread(BytesIO(parts[0][1]))
    assert str(d.file_meta.TransferSyntaxUID) == EVRLE
    assert d.PhotometricInterpretation == "RGB" and d.PlanarConfiguration == 0
    orig = pydicom.dcmread(j.path)
    want = orig.pixel_array  # pydicom converts YBR_FULL to RGB by default
    got = d.pixel_array
    assert got.shape == want.shape == (100, 100, 3)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() < 2.0 and diff.max() <= 16, (diff.mean(), diff.max())


def test_implicit_conversion_and_same_content(loaded):
    mixed = loaded["mixed"]
    i = next(x for x in mixed.instances if x.ts == EVRLE)
    rsp = requests.get(instance_url(loaded["base"], i), headers={
        "Accept": f'multipart/related; type="application/dicom"; '
                  f'transfer-syntax={ImplicitVRLittleEndian}'})
    assert rsp.status_code == 200
    _, [(h, content)] = multipart_parts(rsp)
    assert h["content-type"] == f"application/dicom; transfer-syntax={ImplicitVRLittleEndian}"
    harness.assert_same_content(i, dataset_bytes(content), str(ImplicitVRLittleEndian),
                                "WADO-RS implicit")


# ----------------------------------------------------------------------------------- metadata
def test_metadata_objects_and_bulkdata_uris_resolve(loaded, tmp_path):
    client, mixed = loaded["client"], loaded["mixed"]
    for study, insts in mixed.studies().items():
        meta = client.retrieve_study_metadata(study)
        assert len(meta) == len(insts)
        assert {m["00080018"]["Value"][0] for m in meta} == {i.sop_uid for i in insts}
        for m in meta:
            orig = mixed.by_uid[m["00080018"]["Value"][0]]
            assert m["00100020"]["Value"][0] == orig.patient_id
            assert m["00083002"]["Value"][0] == orig.ts
            uri = m["7FE00010"]["BulkDataURI"]
            assert uri.startswith(f"{loaded['base']}/studies/{study}/series/")
            if orig.ts == str(JPEGLSLossless):
                continue  # no decoder here: see test_jpeg_ls_frames_are_406_or_as_stored
            [data] = client.retrieve_bulkdata(uri)
            want = reference_pixels(orig, tmp_path)
            assert np.array_equal(np.frombuffer(data, dtype=want.dtype).reshape(want.shape),
                                  want), orig.ts
    s = mixed.instances[0]
    series_meta = client.retrieve_series_metadata(s.study_uid, s.series_uid)
    assert len(series_meta) == len(mixed.series()[s.series_uid])
    one = client.retrieve_instance_metadata(s.study_uid, s.series_uid, s.sop_uid)  # a dict
    assert one["0020000D"]["Value"][0] == s.study_uid


def test_metadata_private_bulk_value_and_content_type(loaded):
    mf = loaded["native_mf"]
    rsp = requests.get(instance_url(loaded["base"], mf) + "/metadata",
                       headers={"Accept": "application/dicom+json"})
    assert rsp.status_code == 200
    assert rsp.headers["Content-Type"] == "application/dicom+json"
    [m] = rsp.json()
    orig = pydicom.dcmread(mf.path)
    tag = orig.private_block(0x0009, "PACSGRID TEST").get_tag(0x01)
    creator = f"{tag.group:04X}{tag.element >> 8:04X}"
    assert m[creator]["Value"] == ["PACSGRID TEST"]
    elem = m[f"{tag:08X}"]
    assert elem["vr"] == "OB" and "InlineBinary" not in elem
    [data] = loaded["client"].retrieve_bulkdata(elem["BulkDataURI"])
    assert data == orig[tag].value
    # a small value stays inline, and the whole object round-trips through pydicom
    ds = pydicom.Dataset.from_json(m, bulk_data_uri_handler=lambda *a: b"")
    assert ds.SOPInstanceUID == mf.sop_uid and ds.NumberOfFrames == 3


# ----------------------------------------------------------------------------------- frames
def test_frames_of_native_multiframe(loaded):
    mf, client = loaded["native_mf"], loaded["client"]
    orig = pydicom.dcmread(mf.path).pixel_array
    got = client.retrieve_instance_frames(mf.study_uid, mf.series_uid, mf.sop_uid, [1, 3])
    assert [np.frombuffer(g, dtype=np.uint16).reshape(orig.shape[1:]).tolist() for g in got] \
        == [orig[0].tolist(), orig[2].tolist()]
    rsp = requests.get(instance_url(loaded["base"], mf) + "/frames/2", headers={
        "Accept": 'multipart/related; type="application/octet-stream"'})
    assert rsp.status_code == 200
    boundary, [(h, content)] = multipart_parts(rsp)
    assert rsp.headers["Content-Type"] == (
        f'multipart/related; type="application/octet-stream"; boundary={boundary}')
    assert h["content-type"] == f"application/octet-stream; transfer-syntax={EVRLE}"
    assert content == orig[1].tobytes()


def test_frames_of_rle_multiframe_decoded_and_as_stored(loaded):
    rle, client = loaded["rle_mf"], loaded["client"]
    ds = pydicom.dcmread(rle.path)
    want = ds.pixel_array
    got = client.retrieve_instance_frames(rle.study_uid, rle.series_uid, rle.sop_uid, [3, 1],
                                          media_types=("application/octet-stream",))
    assert got == [want[2].tobytes(), want[0].tobytes()]
    stored = list(generate_frames(ds.PixelData, number_of_frames=3))
    rsp = requests.get(instance_url(loaded["base"], rle) + "/frames/2,3", headers={
        "Accept": 'multipart/related; type="*/*"; transfer-syntax=*'})
    assert rsp.status_code == 200
    boundary, parts = multipart_parts(rsp)
    assert rsp.headers["Content-Type"] == (
        f'multipart/related; type="image/dicom-rle"; boundary={boundary}')
    assert [h["content-type"] for h, _ in parts] == [
        f"image/dicom-rle; transfer-syntax={RLELossless}"] * 2
    assert [c for _, c in parts] == stored[1:]


def test_frame_of_jpeg2000_as_image_jp2(loaded):
    mixed, client = loaded["mixed"], loaded["client"]
    j2k = next(i for i in mixed.instances if i.ts == str(JPEG2000Lossless))
    ds = pydicom.dcmread(j2k.path)
    [stored] = list(generate_frames(ds.PixelData, number_of_frames=1))
    [got] = client.retrieve_instance_frames(j2k.study_uid, j2k.series_uid, j2k.sop_uid, [1],
                                            media_types=("image/jp2",))
    assert got == stored
    # and decoded by default
    [raw] = client.retrieve_instance_frames(j2k.study_uid, j2k.series_uid, j2k.sop_uid, [1])
    assert raw == ds.pixel_array.astype(ds.pixel_array.dtype).tobytes()


def test_jpeg_ls_frames_are_406_or_as_stored(loaded):
    mixed = loaded["mixed"]
    jls = next(i for i in mixed.instances if i.ts == str(JPEGLSLossless))
    url = instance_url(loaded["base"], jls) + "/frames/1"
    assert_problem(requests.get(url, headers={
        "Accept": 'multipart/related; type="application/octet-stream"'}), 406, "JPEG-LS")
    rsp = requests.get(url, headers={"Accept": 'multipart/related; type="image/jls"'})
    assert rsp.status_code == 200
    _, [(h, content)] = multipart_parts(rsp)
    assert h["content-type"] == f"image/jls; transfer-syntax={JPEGLSLossless}"
    ds = pydicom.dcmread(jls.path)
    assert content == next(generate_frames(ds.PixelData, number_of_frames=1))


# ----------------------------------------------------------------------------------- errors
def test_not_found_and_bad_requests(loaded):
    base, mixed = loaded["base"], loaded["mixed"]
    i = mixed.instances[0]
    other = next(x for x in mixed.instances if x.study_uid != i.study_uid)
    assert_problem(requests.get(f"{base}/studies/1.2.3.999"), 404, "1.2.3.999")
    assert_problem(requests.get(f"{base}/studies/1.2.3.999/metadata"), 404, "1.2.3.999")
    assert_problem(requests.get(f"{base}/studies/{i.study_uid}/series/1.2.3.4"), 404)
    # an instance that exists, but under another study in the URL
    assert_problem(requests.get(
        f"{base}/studies/{other.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"), 404)
    assert_problem(requests.get(
        f"{base}/studies/{i.study_uid}/series/{other.series_uid}/instances/{i.sop_uid}"
        "/metadata"), 404)
    assert_problem(requests.get(f"{base}/studies/1.2.abc"), 400, "not a valid UID")
    assert_problem(requests.get(f"{base}/studies/{i.study_uid}/series/01.2"), 400,
                   "SeriesInstanceUID")
    url = instance_url(base, loaded["native_mf"])
    assert_problem(requests.get(url + "/frames/0"), 400, "frame")
    assert_problem(requests.get(url + "/frames/1,x"), 400, "frame")
    assert_problem(requests.get(url + "/frames/4"), 400, "out of range", "3 frames")
    assert_problem(requests.get(url + "/bulkdata/ZZ"), 400, "tag path")
    assert_problem(requests.get(url + "/bulkdata/00291010"), 404)


def test_not_acceptable(loaded):
    base, i = loaded["base"], loaded["mixed"].instances[0]
    url = instance_url(base, i)
    assert_problem(requests.get(url, headers={"Accept": "application/dicom"}), 406,
                   "single part")
    assert_problem(requests.get(url, headers={"Accept": "image/jpeg"}), 406)
    assert_problem(requests.get(url, headers={
        "Accept": 'multipart/related; type="image/jpeg"'}), 406)
    native = next(x for x in loaded["mixed"].instances if x.ts == EVRLE)
    assert_problem(requests.get(instance_url(base, native), headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'
    }), 406, "does not convert", JPEG_BASELINE)
    assert_problem(requests.get(url + "/metadata", headers={"Accept": "application/xml"}), 406,
                   "application/dicom+json")
    assert_problem(requests.get(instance_url(base, native) + "/frames/1", headers={
        "Accept": 'multipart/related; type="image/jp2"'}), 406, "uncompressed")


# ----------------------------------------------------------------------------------- memory
def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_large_study_streams_in_bounded_memory(node, corpora, tmp_path):
    """A 100 MB study goes out as a stream: the node's resident memory grows by far less than
    the study while a slow client reads it, and every byte arrives."""
    src = next(i for i in corpora.native.instances if i.ts == EVRLE)
    ds = pydicom.dcmread(src.path)
    ds.StudyInstanceUID = study = generate_uid(prefix="1.2.826.0.1.3680043.10.1082.")
    paths = []
    for n in range(800):  # 800 x 128 KiB
        ds.SOPInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.10.1082.")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        p = tmp_path / f"big{n:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    harness.store_ok(node, paths)
    pid = node.proc.pid
    before = rss_mb(pid)
    peak = before
    total = 0
    with requests.get(f"http://{harness.HOST}:{node.http_port}/dicom-web/studies/{study}",
                      headers={"Accept": 'multipart/related; type="application/dicom"; '
                                         'transfer-syntax=*'}, stream=True) as rsp:
        assert rsp.status_code == 200
        for k, chunk in enumerate(rsp.iter_content(1 << 20)):
            total += len(chunk)
            if k % 10 == 0:
                peak = max(peak, rss_mb(pid))
    expected = sum(p.stat().st_size for p in paths)
    assert total > expected, (total, expected)  # parts carry their headers and delimiters
    assert peak - before < 40, f"RSS grew {peak - before:.0f} MB for a {expected >> 20} MB study"
