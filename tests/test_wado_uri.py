"""WADO-URI (PS3.18 chapter 9) at /wado, as older viewers and RIS links call it: the object
as stored or in another transfer syntax, and rendered JPEG/PNG with window and size; bad
requests are problem+json naming the parameter."""
from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from harness import HOST, dataset_bytes, reference_pixels, store_ok

EVRLE = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def loaded(module_node_factory, corpora):
    node = module_node_factory()
    store_ok(node, corpora.mixed.instances)
    return node, corpora.mixed


def wado(node, inst, **params) -> requests.Response:
    q = {"requestType": "WADO", "studyUID": inst.study_uid, "seriesUID": inst.series_uid,
         "objectUID": inst.sop_uid, **params}
    return requests.get(f"http://{HOST}:{node.http_port}/wado", params=q, timeout=60)


def test_object_as_stored_is_byte_identical(loaded):
    node, mixed = loaded
    for ts in {i.ts for i in mixed.instances}:
        inst = next(i for i in mixed.instances if i.ts == ts)
        r = wado(node, inst, contentType="application/dicom", transferSyntax="*")
        assert r.status_code == 200, r.text[:300]
        assert r.headers["Content-Type"] == "application/dicom"
        assert int(r.headers["Content-Length"]) == len(r.content)
        assert dataset_bytes(r.content) == dataset_bytes(inst.path), ts


def test_object_by_default_is_explicit_vr_little_endian_decoded(loaded, tmp_path):
    node, mixed = loaded
    inst = next(i for i in mixed.instances if i.ts == str(JPEG2000Lossless))
    r = wado(node, inst, contentType="application/dicom")
    assert r.status_code == 200, r.text[:300]
    d = pydicom.dcmread(BytesIO(r.content))
    assert str(d.file_meta.TransferSyntaxUID) == EVRLE
    assert d.SOPInstanceUID == inst.sop_uid
    assert np.array_equal(d.pixel_array, reference_pixels(inst, tmp_path))


def test_image_by_default_jpeg_with_size_window_and_frame(loaded):
    node, mixed = loaded
    inst = next(i for i in mixed.instances if i.ts == EVRLE and i.modality == "CT")
    ds = pydicom.dcmread(inst.path, stop_before_pixels=True)
    r = wado(node, inst)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"] == "image/jpeg"
    img = Image.open(BytesIO(r.content))
    assert img.format == "JPEG" and img.size == (int(ds.Columns), int(ds.Rows))
    small = Image.open(BytesIO(wado(node, inst, rows="64").content))
    assert small.size == (64 * int(ds.Columns) // int(ds.Rows), 64)
    lung = np.asarray(Image.open(BytesIO(
        wado(node, inst, contentType="image/png", windowCenter="-600",
             windowWidth="1500").content)))
    bone = np.asarray(Image.open(BytesIO(
        wado(node, inst, contentType="image/png", windowCenter="300",
             windowWidth="1500").content)))
    assert lung.shape == bone.shape and not np.array_equal(lung, bone)
    assert wado(node, inst, frameNumber="2").status_code == 404


@pytest.mark.parametrize("params,status,names", [
    ({"requestType": "XYZ"}, 400, "requestType"),
    ({"objectUID": "1.2.x"}, 400, "objectUID"),
    ({"windowCenter": "40"}, 400, "windowWidth"),
    ({"contentType": "image/gif"}, 406, "contentType"),
    ({"contentType": "application/dicom", "transferSyntax": "1.2.3.4"}, 400, "transferSyntax"),
    ({"objectUID": "1.2.3.4.5.6"}, 404, "1.2.3.4.5.6"),
])
def test_bad_requests_are_problems_naming_the_cause(loaded, params, status, names):
    node, mixed = loaded
    r = wado(node, mixed.instances[0], **params)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/problem+json"
    assert names in r.json()["detail"]
