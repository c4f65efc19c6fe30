"""Cross-protocol: what one protocol stores, the others find and retrieve unchanged.
Stored by dcmtk storescu → found by QIDO-RS, retrieved by WADO-RS byte for byte; stored by
STOW-RS (dicomweb-client) → found by QIDO-RS and C-FIND, retrieved by WADO-RS and C-GET."""
from __future__ import annotations

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from harness import (STORESCU_MIXED_CFG, assert_identical, c_get, dataset_bytes, dcmtk, find,
                     multipart_parts)

ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def web(node) -> str:
    return f"http://127.0.0.1:{node.http_port}/dicom-web"


def wado_as_stored(node, path: str) -> dict[str, bytes]:
    rsp = requests.get(web(node) + path, headers={"Accept": ACCEPT_AS_STORED}, timeout=60)
    assert rsp.status_code == 200, f"GET {path}: {rsp.status_code} {rsp.text[:500]}"
    out = {}
    _, parts = multipart_parts(rsp)
    for _, data in parts:
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = data
    return out


def storescu(node, corpus):
    r = dcmtk("storescu", "-xf", STORESCU_MIXED_CFG, "Mixed", "-aet", "STORESCU", "-aec",
              node.ae_title, "+sd", "+r", "127.0.0.1", node.dicom_port, *corpus.top_dirs(),
              timeout=300)
    assert r.returncode == 0, f"storescu failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def test_storescu_then_qido_and_wado(node, corpora):
    corpus = corpora.mixed
    storescu(node, corpus)
    client = DICOMwebClient(url=web(node))
    found = {str(pydicom.Dataset.from_json(s).StudyInstanceUID) for s in client.search_for_studies()}
    assert found == set(corpus.studies())
    same_syntax = 0
    for study_uid, insts in corpus.studies().items():
        got = wado_as_stored(node, f"/studies/{study_uid}")
        # The node keeps the data set exactly as received and writes its own file meta group.
        # storescu converts a file on the fly when the context it got is another syntax, so
        # the reference for "as received" is what C-GET hands back; where the syntax stayed
        # the file's own, that is also the file's data set.
        by_cget = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
        assert_identical(by_cget.received, {u: dataset_bytes(b) for u, b in got.items()},
                         f"WADO-RS vs C-GET, study {study_uid}")
        for i in insts:
            if by_cget.transfer_syntaxes.get(i.sop_uid) == i.ts:
                assert by_cget.received[i.sop_uid] == i.data, f"{i.sop_uid} changed in storage"
                same_syntax += 1
    assert same_syntax >= len(corpus) // 2, f"only {same_syntax} files kept their own syntax"


def test_stow_then_qido_cfind_wado_cget(node, corpora):
    corpus = corpora.native
    client = DICOMwebClient(url=web(node))
    datasets = [pydicom.dcmread(i.path) for i in corpus.instances]
    rsp = client.store_instances(datasets)
    stored = {str(item.ReferencedSOPInstanceUID) for item in rsp.ReferencedSOPSequence}
    assert stored == {i.sop_uid for i in corpus.instances}
    assert "FailedSOPSequence" not in rsp or len(rsp.FailedSOPSequence) == 0

    study_uid = corpus.instances[0].study_uid
    series = {str(pydicom.Dataset.from_json(s).SeriesInstanceUID)
              for s in client.search_for_series(study_instance_uid=study_uid)}
    assert series == set(corpus.series())

    res = find(node, "STUDY", {"StudyInstanceUID": study_uid, "NumberOfStudyRelatedInstances": ""})
    assert res.values("NumberOfStudyRelatedInstances") == [str(len(corpus))]

    # dicomweb-client re-encodes what it uploads; compare retrieval with the bytes stored, read
    # back by each protocol: WADO-RS and C-GET must return the same bytes.
    by_wado = wado_as_stored(node, f"/studies/{study_uid}")
    by_cget = c_get(node, "STUDY", {"StudyInstanceUID": study_uid}).received
    assert set(by_wado) == stored
    for uid, data in by_wado.items():
        ds_wado = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        ds_orig = next(d for d in datasets if str(d.SOPInstanceUID) == uid)
        assert ds_wado.PixelData == ds_orig.PixelData, uid
        assert ds_wado.PatientName == ds_orig.PatientName, uid
        # C-GET sends the data set only; the WADO part is the same data set after its meta group.
        assert data.endswith(by_cget[uid]), f"{uid}: WADO-RS and C-GET bytes differ"
