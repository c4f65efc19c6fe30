"""Rendered resources and thumbnails (PS3.18 10.4): instances stored by C-STORE come back as
JPEG or PNG that PIL opens, at the stored size or fitted to a viewport, windowed from the
object or the request, from native and compressed syntaxes; errors are problem+json."""
from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless,
                         RLELossless, SecondaryCaptureImageStorage, generate_uid)

from harness import HOST, store_ok

PROBLEM_JSON = "application/problem+json"


def base(node) -> str:
    return f"http://{HOST}:{node.http_port}/dicom-web"


def url(node, inst, suffix="rendered") -> str:
    return (f"{base(node)}/studies/{inst.study_uid}/series/{inst.series_uid}"
            f"/instances/{inst.sop_uid}/{suffix}")


def get(u, accept=None, **params) -> requests.Response:
    headers = {"Accept": accept} if accept else {}
    return requests.get(u, headers=headers, params=params, timeout=60)


def image(r: requests.Response) -> Image.Image:
    assert r.status_code == 200, r.text[:500]
    img = Image.open(BytesIO(r.content))
    img.load()
    return img


class Made:
    """A hand-made instance: its file and the UIDs the URLs need."""

    def __init__(self, path, ds):
        self.path = path
        self.sop_uid = str(ds.SOPInstanceUID)
        self.study_uid = str(ds.StudyInstanceUID)
        self.series_uid = str(ds.SeriesInstanceUID)
        self.rows, self.cols = int(ds.Rows), int(ds.Columns)


def make_multiframe(src, out) -> Made:
    """Three frames of a native MR image, each a different picture, at 40 x 64."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 98
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns = 40, 64
    y, x = np.mgrid[0:40, 0:64]
    frames = [(x * 60).astype(np.uint16), (y * 100).astype(np.uint16),
              ((x + y) * 40).astype(np.uint16)]
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack(frames).tobytes()
    for kw in ("WindowCenter", "WindowWidth"):
        if kw in ds:
            delattr(ds, kw)
    ds.save_as(out, enforce_file_format=True)
    return Made(out, ds)


def make_jpeg_baseline(src, out) -> Made:
    """An 8-bit secondary capture compressed as JPEG baseline (1.2.840.10008.1.2.4.50)."""
    ref = pydicom.dcmread(src, stop_before_pixels=True)
    y, x = np.mgrid[0:48, 0:80]
    pixels = ((x * 3 + y) % 256).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=95)
    ds = pydicom.Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    for kw in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyTime",
               "AccessionNumber", "StudyID"):
        if kw in ref:
            setattr(ds, kw, getattr(ref, kw))
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 48, 80
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True)
    return Made(out, ds)


@pytest.fixture(scope="module")
def loaded(module_node_factory, corpora, tmp_path_factory):
    node = module_node_factory()
    tmp = tmp_path_factory.mktemp("rendered")
    native = [i for i in corpora.native.instances if i.ts == "1.2.840.10008.1.2.1"]
    multi = make_multiframe(native[0].path, tmp / "multi.dcm")
    jpeg = make_jpeg_baseline(native[0].path, tmp / "jpeg.dcm")
    store_ok(node, corpora.mixed.instances + corpora.native.instances)
    store_ok(node, [multi.path, jpeg.path])
    return node, corpora, native[0], multi, jpeg


def test_instance_rendered_jpeg_by_dicomweb_client(loaded):
    node, _, inst, _, _ = loaded
    ds = pydicom.dcmread(inst.path, stop_before_pixels=True)
    data = DICOMwebClient(url=base(node)).retrieve_instance_rendered(
        inst.study_uid, inst.series_uid, inst.sop_uid, media_types=("image/jpeg",))
    img = Image.open(BytesIO(data))
    assert img.format == "JPEG"
    assert img.size == (int(ds.Columns), int(ds.Rows))


def test_default_is_jpeg_and_png_on_request(loaded):
    node, _, inst, _, _ = loaded
    r = get(url(node, inst))
    assert r.headers["Content-Type"] == "image/jpeg"
    assert image(r).format == "JPEG"
    for accept in ("image/png", "image/png, image/jpeg;q=0.5", "image/*;q=0.1, image/png"):
        r = get(url(node, inst), accept)
        assert r.headers["Content-Type"] == "image/png", accept
        assert image(r).format == "PNG"
    assert get(url(node, inst), "*/*").headers["Content-Type"] == "image/jpeg"


def test_window_changes_the_pixels(loaded):
    node, _, inst, _, _ = loaded
    px = pydicom.dcmread(inst.path).pixel_array
    c, w = float(np.median(px)), max(float(px.std()), 2.0)
    default = np.asarray(image(get(url(node, inst), "image/png")))
    narrow = np.asarray(image(get(url(node, inst), "image/png", window=f"{c},{w / 4},linear")))
    wide = np.asarray(image(get(url(node, inst), "image/png", window=f"{c},{w * 8},linear")))
    sigmoid = np.asarray(image(get(url(node, inst), "image/png", window=f"{c},{w / 4},sigmoid")))
    assert default.shape == narrow.shape == wide.shape == px.shape
    assert not np.array_equal(narrow, wide)
    assert not np.array_equal(narrow, sigmoid)
    # A narrow window saturates more pixels than a wide one.
    saturated = lambda a: int(((a == 0) | (a == 255)).sum())  # noqa: E731
    assert saturated(narrow) > saturated(wide)
    # Brighter where the data is brighter, whatever the window.
    hi, lo = px >= np.percentile(px, 90), px <= np.percentile(px, 10)
    assert wide[hi].mean() > wide[lo].mean()


def test_viewport_and_quality(loaded):
    node, _, inst, _, _ = loaded
    ds = pydicom.dcmread(inst.path, stop_before_pixels=True)
    w, h = int(ds.Columns), int(ds.Rows)
    img = image(get(url(node, inst), viewport="100,50"))
    scale = min(100 / w, 50 / h)
    assert img.size == (round(w * scale), round(h * scale))
    small = get(url(node, inst), quality="5").content
    large = get(url(node, inst), quality="95").content
    assert len(small) < len(large)


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless, JPEGLosslessSV1])
def test_compressed_instances_render(loaded, ts):
    node, corpora, _, _, _ = loaded
    inst = next(i for i in corpora.mixed.instances if i.ts == ts)
    ds = pydicom.dcmread(inst.path, stop_before_pixels=True)
    img = image(get(url(node, inst), "image/png"))
    assert img.size == (int(ds.Columns), int(ds.Rows))
    assert np.asarray(img).std() > 0, "a rendered image is not blank"


def test_jpeg_baseline_renders_close_to_its_pixels(loaded):
    node, _, _, _, jpeg = loaded
    img = image(get(url(node, jpeg), "image/png", window="127.5,256,linear-exact"))
    assert img.size == (jpeg.cols, jpeg.rows)
    y, x = np.mgrid[0:48, 0:80]
    expected = ((x * 3 + y) % 256).astype(np.int16)
    diff = np.abs(np.asarray(img).astype(np.int16) - expected)
    assert np.median(diff) <= 4, f"median difference {np.median(diff)}"


def test_missing_codec_is_406_naming_the_syntax(loaded):
    node, corpora, _, _, _ = loaded
    inst = next(i for i in corpora.mixed.instances if i.ts == JPEGLSLossless)
    r = get(url(node, inst))
    assert r.status_code == 406, r.text
    assert r.headers["Content-Type"] == PROBLEM_JSON
    assert JPEGLSLossless in r.json()["detail"]


def test_frames_of_a_multiframe_object(loaded):
    node, _, _, multi, _ = loaded
    frames = [np.asarray(image(get(url(node, multi, f"frames/{n}/rendered"), "image/png",
                                   window="1500,3000")))
              for n in (1, 2, 3)]
    assert all(f.shape == (multi.rows, multi.cols) for f in frames)
    assert not np.array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[1], frames[2])
    # Frame 1 is a horizontal ramp, frame 2 a vertical one.
    assert frames[0][:, -1].mean() > frames[0][:, 0].mean()
    assert frames[1][-1, :].mean() > frames[1][0, :].mean()
    inst_png = np.asarray(image(get(url(node, multi), "image/png", window="1500,3000")))
    assert np.array_equal(inst_png, frames[0]), "instance rendered is frame 1"
    assert get(url(node, multi, "frames/4/rendered")).status_code == 404
    r = get(url(node, multi, "frames/1,2/rendered"))
    assert r.status_code == 400 and "frame" in r.json()["detail"]


def test_thumbnails_fit_128(loaded):
    node, _, inst, multi, _ = loaded
    assert image(get(url(node, inst, "thumbnail"))).size == (128, 128)  # 256 x 256 MR
    assert image(get(url(node, multi, "frames/2/thumbnail"))).size == (128, 80)  # 64 x 40
    assert image(get(url(node, inst, "thumbnail"), viewport="32,32")).size == (32, 32)


def test_study_and_series_give_one_representative_image(loaded):
    node, _, inst, _, _ = loaded
    study = f"{base(node)}/studies/{inst.study_uid}"
    series = f"{study}/series/{inst.series_uid}"
    for u in (f"{study}/rendered", f"{series}/rendered"):
        img = image(get(u))
        assert img.format == "JPEG" and img.size == (256, 256), u
    for u in (f"{study}/thumbnail", f"{series}/thumbnail"):
        assert image(get(u, "image/png")).size == (128, 128), u


@pytest.mark.parametrize("param,value", [
    ("window", "abc"), ("window", "40"), ("window", "40,0"), ("window", "40,400,cubic"),
    ("viewport", "0,10"), ("viewport", "10"), ("quality", "0"), ("quality", "101"),
])
def test_bad_parameters_are_400_naming_them(loaded, param, value):
    node, _, inst, _, _ = loaded
    r = get(url(node, inst), **{param: value})
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"] == PROBLEM_JSON
    assert r.json()["detail"].startswith(param)


def test_unacceptable_media_type_is_406(loaded):
    node, _, inst, _, _ = loaded
    r = get(url(node, inst), "image/gif")
    assert r.status_code == 406, r.text
    assert r.headers["Content-Type"] == PROBLEM_JSON
    assert "image/jpeg" in r.json()["detail"]


def test_unknown_or_misplaced_instances_are_404_and_bad_uids_400(loaded):
    node, corpora, inst, _, _ = loaded
    other_series = next(i for i in corpora.native.instances if i.series_uid != inst.series_uid)
    b = base(node)
    cases = {
        f"{b}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/1.2.3.4/rendered": 404,
        f"{b}/studies/{inst.study_uid}/series/{other_series.series_uid}/instances/"
        f"{inst.sop_uid}/rendered": 404,
        f"{b}/studies/1.2.3.4/rendered": 404,
        f"{b}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/1.2.x/rendered": 400,
        f"{b}/studies/not-a-uid/thumbnail": 400,
    }
    for u, code in cases.items():
        r = get(u)
        assert r.status_code == code, f"{u}: {r.status_code} {r.text}"
        assert r.headers["Content-Type"] == PROBLEM_JSON


def test_native_ybr_422_colour_renders_and_serves_its_frame(loaded):
    """Uncompressed YBR_FULL_422 holds two samples a pixel (Y1 Y2 Cb Cr per pair): the frame
    served is exactly the pixel data, and the rendering matches pydicom's own decoding."""
    from pydicom.data import get_testdata_file
    from harness import multipart_parts
    node, _, _, _, _ = loaded
    path = get_testdata_file("SC_ybr_full_422_uncompressed.dcm")
    ds = pydicom.dcmread(path)
    store_ok(node, [path])
    made = Made(path, ds)
    png = np.asarray(image(get(url(node, made), "image/png"))).astype(np.int16)
    assert png.shape == (made.rows, made.cols, 3)
    expected = ds.pixel_array.astype(np.int16)  # pydicom >= 3 converts YBR to RGB itself
    assert np.abs(png - expected).max() <= 2
    r = get(url(node, made, "frames/1"),
            'multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert r.status_code == 200, r.text[:300]
    _, parts = multipart_parts(r)
    assert [body for _, body in parts] == [ds.PixelData]


def test_pixel_data_the_decoder_cannot_take_is_406_not_500(loaded, tmp_path):
    """A 32-bit RT Dose grid is stored like any object, but the renderer has no 32-bit
    path: the answer says so as a 406 problem, and the node goes on rendering others."""
    from pydicom.data import get_testdata_file
    from harness import rewrite
    node, _, inst, _, _ = loaded
    # the sample's file meta names another SOP Instance UID than its data set: give it one
    path = rewrite(get_testdata_file("rtdose_1frame.dcm"), tmp_path / "dose.dcm",
                   SOPInstanceUID=generate_uid())
    store_ok(node, [path])
    r = get(url(node, Made(path, pydicom.dcmread(path))))
    assert r.status_code == 406, r.text
    assert r.headers["Content-Type"] == PROBLEM_JSON
    assert "BitsAllocated" in r.json()["detail"]
    assert get(url(node, inst)).status_code == 200
