"""Duplicates: the same object twice is stored once; a different object under the same SOP
Instance UID gets warning 0xB000 and never replaces the first."""
from __future__ import annotations

import pydicom
from pydicom.uid import ImplicitVRLittleEndian

from harness import (SUCCESS, WARNING_COERCED_OR_DUPLICATE, assert_identical, c_get, dcmtk,
                     find, find_sop, hexs, instance_uids, rewrite, store)


def get_one(node, inst):
    return c_get(node, "IMAGE", {"StudyInstanceUID": inst.study_uid,
                                 "SeriesInstanceUID": inst.series_uid,
                                 "SOPInstanceUID": inst.sop_uid})


def test_same_file_twice_is_one_instance(node, corpora):
    inst = corpora.native.instances[0]
    assert store(node, [inst])[inst.path] == SUCCESS
    assert store(node, [inst])[inst.path] == SUCCESS, "same UID, same bytes must be a success"
    assert find_sop(node, inst) == 1
    res = find(node, "STUDY", {"StudyInstanceUID": inst.study_uid,
                               "NumberOfStudyRelatedInstances": ""})
    assert [int(d.NumberOfStudyRelatedInstances) for d in res.identifiers] == [1]
    assert instance_uids(node) == [inst.sop_uid]


def test_same_files_from_storescu_then_pynetdicom(node, corpora):
    """The same files from two clients (dcmtk storescu, then pynetdicom as another AE): every
    store succeeds and each instance is stored once. Explicit VR files only, so that storescu
    sends them unchanged whichever uncompressed syntax the node accepts."""
    insts = [i for i in corpora.native.instances if i.ts == "1.2.840.10008.1.2.1"]
    assert len(insts) >= 2
    r = dcmtk("storescu", "-v", "-aet", "STORESCU", "-aec", node.ae_title, "127.0.0.1",
              node.dicom_port, *[i.path for i in insts], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (r.stdout + r.stderr).count("Received Store Response (Success)") == len(insts)
    res = store(node, insts, ae_title="PYTEST")
    assert all(s == SUCCESS for s in res.values()), (
        "same bytes from another AE: " + str({p.name: hexs(s) for p, s in res.items()}))
    assert sorted(instance_uids(node)) == sorted(i.sop_uid for i in insts)


def changed_copies(inst, tmp_path):
    """Objects with the same SOP Instance UID as `inst` and different bytes."""
    ds = pydicom.dcmread(inst.path)
    pix = bytearray(ds.PixelData)
    pix[len(pix) // 2] ^= 0xFF
    pixel_changed = tmp_path / "pixel.dcm"
    ds.PixelData = bytes(pix)
    ds.save_as(pixel_changed, enforce_file_format=True)
    header_changed = rewrite(inst.path, tmp_path / "header.dcm", InstitutionName="Other Hospital")
    other_ts = tmp_path / "implicit.dcm"
    ds = pydicom.dcmread(inst.path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(other_ts, enforce_file_format=True)
    return {"header": header_changed, "pixels": pixel_changed, "transfer-syntax": other_ts}


def test_changed_bytes_same_uid_warn_and_first_is_kept(node, corpora, tmp_path):
    inst = next(i for i in corpora.native.instances if i.ts == "1.2.840.10008.1.2.1")
    assert store(node, [inst])[inst.path] == SUCCESS
    for what, path in changed_copies(inst, tmp_path).items():
        for attempt in (1, 2):
            status = store(node, [path])[path]
            assert status == WARNING_COERCED_OR_DUPLICATE, (
                f"{what} changed, same UID, attempt {attempt}: status {hexs(status)}, "
                "expected 0xB000")
        assert find_sop(node, inst) == 1, f"after {what}: the UID is answered more than once"
        got = get_one(node, inst)
        assert got.status == SUCCESS, hexs(got.status)
        assert_identical({inst.sop_uid: inst.data}, got.received, f"after a changed {what}")
    # the original again is still a plain success
    assert store(node, [inst])[inst.path] == SUCCESS


def test_first_object_still_kept_after_restart(node, corpora, tmp_path):
    inst = corpora.native.instances[1]
    assert store(node, [inst])[inst.path] == SUCCESS
    changed = changed_copies(inst, tmp_path)["header"]
    assert store(node, [changed])[changed] == WARNING_COERCED_OR_DUPLICATE
    node.restart()
    assert store(node, [changed])[changed] == WARNING_COERCED_OR_DUPLICATE
    got = get_one(node, inst)
    assert_identical({inst.sop_uid: inst.data}, got.received, "after restart")
    assert instance_uids(node) == [inst.sop_uid]
