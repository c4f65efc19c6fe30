"""C-GET (pynetdicom, dcmtk getscu) and C-MOVE (movescu, pynetdicom) to a dcmtk storescp:
every retrieved data set is byte-identical to what was stored, counts in final responses."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import (SUCCESS, TS_BY_KEY, RemoteAE, StoreSCP, assert_identical,
                     assert_same_content, c_get, c_move, dataset_bytes, dcmtk, hexs,
                     reference_pixels, store_ok)
import numpy as np
import pydicom


@pytest.fixture(scope="module")
def storescp(tmp_path_factory):
    scp = StoreSCP(tmp_path_factory.mktemp("storescp"), "STORESCP").start()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def plainscp(tmp_path_factory):
    """storescp as it runs by default: uncompressed transfer syntaxes only."""
    scp = StoreSCP(tmp_path_factory.mktemp("plainscp"), "PLAINSCP", accept_all=False).start()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def loaded(module_node_factory, storescp, plainscp, corpora):
    """A node holding the mixed and native corpora, with STORESCP and PLAINSCP as C-MOVE
    destinations."""
    node = module_node_factory(remote_aes=[RemoteAE("STORESCP", storescp.port),
                                           RemoteAE("PLAINSCP", plainscp.port)])
    corpus = corpora.mixed + corpora.native
    store_ok(node, corpus.instances)
    return node, corpus


def expected(insts) -> dict[str, bytes]:
    return {i.sop_uid: i.data for i in insts}


def check_final(res, n, what):
    assert res.status == SUCCESS, f"{what}: final status {hexs(res.status)} ({res.final})"
    assert res.count("NumberOfCompletedSuboperations") == n, f"{what}: {res.final}"
    assert res.count("NumberOfFailedSuboperations") in (0, None), f"{what}: {res.final}"
    assert res.count("NumberOfWarningSuboperations") in (0, None), f"{what}: {res.final}"


# --------------------------------------------------------------------------- C-GET, pynetdicom
def test_cget_every_study_study_root(loaded):
    node, corpus = loaded
    total = 0
    for study_uid, insts in corpus.studies().items():
        res = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
        assert_identical(expected(insts), res.received, f"C-GET study {study_uid}")
        assert not res.duplicates, f"instances sent twice: {res.duplicates}"
        check_final(res, len(insts), f"C-GET study {study_uid}")
        total += len(res.received)
    assert total == len(corpus)


def test_cget_study_patient_root(loaded):
    node, corpus = loaded
    study_uid, insts = next(iter(corpus.studies().items()))
    res = c_get(node, "STUDY", {"PatientID": insts[0].patient_id, "StudyInstanceUID": study_uid},
                model="patient")
    assert_identical(expected(insts), res.received, "C-GET patient root study")
    check_final(res, len(insts), "C-GET patient root study")


def test_cget_patient_level_patient_root(loaded):
    node, corpus = loaded
    pid = corpus.instances[0].patient_id
    insts = [i for i in corpus.instances if i.patient_id == pid]
    res = c_get(node, "PATIENT", {"PatientID": pid}, model="patient")
    assert_identical(expected(insts), res.received, "C-GET patient level")
    check_final(res, len(insts), "C-GET patient level")


def test_cget_series(loaded):
    node, corpus = loaded
    for series_uid, insts in list(corpus.series().items())[:6]:
        res = c_get(node, "SERIES", {"StudyInstanceUID": insts[0].study_uid,
                                     "SeriesInstanceUID": series_uid})
        assert_identical(expected(insts), res.received, f"C-GET series {series_uid}")
        check_final(res, len(insts), f"C-GET series {series_uid}")


def test_cget_image_uid_list(loaded):
    """IMAGE level with a list of SOP Instance UIDs (hierarchical: study and series UID given)."""
    node, corpus = loaded
    series_uid, insts = next((s, i) for s, i in corpus.series().items() if len(i) >= 3)
    picked = [insts[0], insts[2]]
    res = c_get(node, "IMAGE", {"StudyInstanceUID": insts[0].study_uid,
                                "SeriesInstanceUID": series_uid,
                                "SOPInstanceUID": "\\".join(i.sop_uid for i in picked)})
    assert_identical(expected(picked), res.received, "C-GET image list")
    check_final(res, len(picked), "C-GET image list")


@pytest.mark.parametrize("ts_key", list(TS_BY_KEY))
def test_cget_image_each_transfer_syntax(loaded, ts_key):
    node, corpus = loaded
    inst = next(i for i in corpus.instances if i.ts == TS_BY_KEY[ts_key])
    res = c_get(node, "IMAGE", {"StudyInstanceUID": inst.study_uid,
                                "SeriesInstanceUID": inst.series_uid,
                                "SOPInstanceUID": inst.sop_uid})
    assert_identical({inst.sop_uid: inst.data}, res.received, f"C-GET {ts_key}")
    assert res.transfer_syntaxes[inst.sop_uid] == inst.ts, "sent in another transfer syntax"
    check_final(res, 1, f"C-GET {ts_key}")


def test_cget_nothing_matches(loaded):
    node, _ = loaded
    res = c_get(node, "STUDY", {"StudyInstanceUID": "1.2.3.4.5.6.7.8.9"})
    assert res.status == SUCCESS, hexs(res.status)
    assert not res.received
    assert res.count("NumberOfCompletedSuboperations") in (0, None)


# --------------------------------------------------------------------------- C-GET, dcmtk getscu
GETSCU_PREFER = {"explicit": "+xe", "implicit": "+xi", "deflate": "+xd", "rle": "+xr",
                 "jpegls": "+xt", "j2k": "+xv", "jpegll": "+xs"}


def getscu(node, outdir: Path, level: str, keys: dict, prefer: str = "+xe", model: str = "-S"):
    """Run dcmtk getscu (bit-preserving); -> (result, {SOPInstanceUID: (ts, data set bytes)})."""
    outdir.mkdir(parents=True, exist_ok=True)
    args = ["-v", model, prefer, "+B", "-aet", "GETSCU", "-aec", node.ae_title, "-od", outdir,
            "-k", f"QueryRetrieveLevel={level}"]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}"]
    r = dcmtk("getscu", *args, "127.0.0.1", node.dicom_port, timeout=180)
    got = {}
    for p in outdir.iterdir():
        if p.is_file():
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            got[str(ds.SOPInstanceUID)] = (str(ds.file_meta.TransferSyntaxUID), dataset_bytes(p))
    return r, got


def assert_getscu_received(insts, got, what):
    """getscu 3.6.7 offers some syntaxes only (e.g. explicit VR for native data even with +xi):
    a lossless conversion between uncompressed syntaxes is fine, anything else byte-identical."""
    assert set(got) == {i.sop_uid for i in insts}, (
        f"{what}: received {len(got)} of {len(insts)}; missing "
        f"{sorted({i.sop_uid for i in insts} - set(got))[:3]}")
    for i in insts:
        ts, raw = got[i.sop_uid]
        assert_same_content(i, raw, ts, what)


def test_getscu_study(loaded, corpora, tmp_path):
    node, _ = loaded
    insts = corpora.native.instances
    r, got = getscu(node, tmp_path / "out", "STUDY", {"StudyInstanceUID": insts[0].study_uid})
    assert r.returncode == 0, f"getscu exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert_getscu_received(insts, got, "getscu study")


def test_getscu_series(loaded, corpora, tmp_path):
    node, _ = loaded
    series_uid, insts = next(iter(corpora.native.series().items()))
    r, got = getscu(node, tmp_path / "out", "SERIES", {"StudyInstanceUID": insts[0].study_uid,
                                                       "SeriesInstanceUID": series_uid})
    assert r.returncode == 0, f"getscu exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert_getscu_received(insts, got, "getscu series")


@pytest.mark.parametrize("ts_key", list(TS_BY_KEY))
def test_getscu_image_each_transfer_syntax(loaded, tmp_path, ts_key):
    """getscu proposes its preferred syntax first for every storage class; the node must take a
    syntax it can send the stored bytes in."""
    node, corpus = loaded
    inst = next(i for i in corpus.instances if i.ts == TS_BY_KEY[ts_key])
    r, got = getscu(node, tmp_path / "out", "IMAGE",
                    {"StudyInstanceUID": inst.study_uid, "SeriesInstanceUID": inst.series_uid,
                     "SOPInstanceUID": inst.sop_uid}, prefer=GETSCU_PREFER[ts_key])
    assert r.returncode == 0, f"getscu exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert_getscu_received([inst], got, f"getscu {ts_key}")


@pytest.mark.parametrize("ts_key", ["rle", "j2k", "jpegll"])
def test_getscu_taking_only_uncompressed_gets_compressed_instances_decoded(loaded, tmp_path,
                                                                           ts_key):
    """getscu proposes uncompressed syntaxes unless told otherwise: an instance stored
    compressed goes to it decoded, with the original's pixels."""
    node, corpus = loaded
    inst = next(i for i in corpus.instances if i.ts == TS_BY_KEY[ts_key])
    r, got = getscu(node, tmp_path / "out", "IMAGE",
                    {"StudyInstanceUID": inst.study_uid, "SeriesInstanceUID": inst.series_uid,
                     "SOPInstanceUID": inst.sop_uid}, prefer="+xe")
    assert r.returncode == 0, f"getscu exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert set(got) == {inst.sop_uid}, r.stdout + r.stderr
    [path] = [p for p in (tmp_path / "out").iterdir() if p.is_file()]
    d = pydicom.dcmread(path)
    assert not d.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(d.pixel_array, reference_pixels(inst, tmp_path)), ts_key
    assert d.PatientID == inst.patient_id


# --------------------------------------------------------------------------- C-MOVE
def test_movescu_to_a_storescp_taking_only_uncompressed(loaded, plainscp, tmp_path):
    """A destination that accepts uncompressed syntaxes only gets compressed instances
    decoded (pixels equal to the original's); those this node has no decoder for (JPEG-LS)
    fail as sub-operations, counted in the final response and named in the node's log."""
    node, corpus = loaded
    study_uid, insts = max(corpus.studies().items(), key=lambda kv: len({i.ts for i in kv[1]}))
    jls = {i.sop_uid for i in insts if i.ts == TS_BY_KEY["jpegls"]}
    assert jls and len({i.ts for i in insts}) >= 4, "the study mixes syntaxes, JPEG-LS among them"
    plainscp.clear()
    r = movescu(node, "STUDY", {"StudyInstanceUID": study_uid}, dest="PLAINSCP")
    out = r.stdout + r.stderr
    assert "Final Move Response (Warning: SubOperationsCompleteOneOrMoreFailures)" in out, out
    res = c_move(node, "STUDY", {"StudyInstanceUID": study_uid}, "PLAINSCP")
    assert res.count("NumberOfFailedSuboperations") == len(jls), res.final
    assert res.count("NumberOfCompletedSuboperations") == len(insts) - len(jls), res.final
    files = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
             for p in plainscp.out.iterdir() if p.suffix == ".dcm"}
    assert set(files) == {i.sop_uid for i in insts} - jls
    for i in insts:
        if i.sop_uid in jls:
            continue
        d = pydicom.dcmread(files[i.sop_uid])
        assert not d.file_meta.TransferSyntaxUID.is_compressed, i.ts
        assert np.array_equal(d.pixel_array, reference_pixels(i, tmp_path)), i.ts
    log = node.log_text()
    assert all(uid in log for uid in jls), "the failed sub-operations are logged by UID"
    assert "no decoder for JPEG-LS" in log, "the log says why they failed"

def movescu(node, level, keys, dest="STORESCP", model="-S"):
    args = ["-v", model, "-aet", "MOVESCU", "-aec", node.ae_title, "-aem", dest,
            "-k", f"QueryRetrieveLevel={level}"]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}"]
    return dcmtk("movescu", *args, "127.0.0.1", node.dicom_port, timeout=180)


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_movescu_to_storescp(loaded, storescp, level):
    node, corpus = loaded
    study_uid, insts = max(corpus.studies().items(), key=lambda kv: len({i.ts for i in kv[1]}))
    keys = {"StudyInstanceUID": study_uid}
    if level in ("SERIES", "IMAGE"):
        keys["SeriesInstanceUID"] = insts[0].series_uid
        insts = [i for i in insts if i.series_uid == insts[0].series_uid]
    if level == "IMAGE":
        insts = insts[:2]
        keys["SOPInstanceUID"] = "\\".join(i.sop_uid for i in insts)
    storescp.clear()
    r = movescu(node, level, keys)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"movescu exited {r.returncode}:\n{out}"
    assert "Received Final Move Response (Success)" in out, out
    assert_identical(expected(insts), storescp.received(), f"movescu {level}")


def test_movescu_patient_root_patient_level(loaded, storescp):
    node, corpus = loaded
    pid = corpus.instances[-1].patient_id
    insts = [i for i in corpus.instances if i.patient_id == pid]
    storescp.clear()
    r = movescu(node, "PATIENT", {"PatientID": pid}, model="-P")
    assert r.returncode == 0, f"movescu exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert_identical(expected(insts), storescp.received(), "movescu patient")


def test_cmove_pynetdicom_counts_whole_corpus(loaded, storescp):
    """Every study moved: final responses count the sub-operations; all bytes identical."""
    node, corpus = loaded
    storescp.clear()
    for study_uid, insts in corpus.studies().items():
        res = c_move(node, "STUDY", {"StudyInstanceUID": study_uid}, "STORESCP")
        check_final(res, len(insts), f"C-MOVE study {study_uid}")
    assert_identical(expected(corpus.instances), storescp.received(), "C-MOVE all studies")


def test_cmove_series_pynetdicom(loaded, storescp):
    node, corpus = loaded
    series_uid, insts = list(corpus.series().items())[3]
    storescp.clear()
    res = c_move(node, "SERIES", {"StudyInstanceUID": insts[0].study_uid,
                                  "SeriesInstanceUID": series_uid}, "STORESCP")
    check_final(res, len(insts), "C-MOVE series")
    assert_identical(expected(insts), storescp.received(), "C-MOVE series")
