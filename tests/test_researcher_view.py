"""The de-identified view of the `researcher` role (PS3.15 Annex E, Basic profile with Retain
UIDs and Retain Longitudinal Temporal Information with Modified Dates), on a real node.

A generated corpus (two patients, two studies each, names, institution, physicians, private
tags; explicit, deflated and RLE objects) is stored with dcmtk storescu; pynetdicom adds one
object with BurnedInAnnotation = YES, one with names inside nested sequences, and an implicit VR
copy. API keys made
with `pacsgrid access new-key` give a researcher and a clinician. The researcher's QIDO-RS and
WADO-RS answers hold no real identity, one pseudonym per patient, dates shifted with their
intervals kept, UIDs and pixel data unchanged; matching on identifying keys is refused; the
burned-in object is withheld; REST refuses; the clinician sees real data; nothing stored
changes; the reads are audited with the real patient.
"""
from __future__ import annotations

import datetime
import json
import re
import struct
import subprocess
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from harness import (HOST, STORESCU_MIXED_CFG, dcmtk, gen_dataset, meta_end, multipart_parts,
                     pydicom_sample_files, rewrite, run_pacsgrid, store, store_ok)
from test_audit_schema import assert_valid, schema  # noqa: F401  (schema is a fixture)

PROBLEM = "application/problem+json"
AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
ROOT = "1.2.826.0.1.3680043.8.498.4242"


def new_key(name: str, role: str) -> tuple[str, str]:
    """(secret, config entry) of an API key made by the CLI."""
    r = run_pacsgrid(["access", "new-key", "--name", name, "--role", role])
    assert r.returncode == 0, r.stderr
    secret = re.search(r"^#\s+(pgk_\S+)$", r.stdout, re.M).group(1)
    return secret, r.stdout[r.stdout.index("[[access.http.api_key]]"):]


def get_as(node, key: str, path: str, **kw) -> requests.Response:
    """GET on the node's HTTP port with an API key."""
    headers = dict(kw.pop("headers", {}) or {})
    headers["Authorization"] = f"Bearer {key}"
    return requests.get(f"http://{HOST}:{node.http_port}{path}", headers=headers, timeout=120,
                        **kw)


class Site:
    def __init__(self, node, corpus, keys, burned, nested, tmp, others=()):
        self.node, self.corpus, self.keys = node, corpus, keys
        self.burned, self.nested, self.tmp = burned, nested, tmp
        self.headers = {p.sop_uid: pydicom.dcmread(p.path, stop_before_pixels=True)
                        for p in corpus.instances}
        self.headers[burned.SOPInstanceUID] = burned
        self.headers[nested.SOPInstanceUID] = nested
        for ds in others:
            self.headers[ds.SOPInstanceUID] = ds

    def get(self, path: str, who: str, **kw) -> requests.Response:
        return get_as(self.node, self.keys[who], path, **kw)

    def retrieve(self, path: str, who: str) -> dict[str, bytes]:
        r = self.get(path, who, headers=AS_STORED)
        assert r.status_code == 200, r.text
        out = {}
        for _, data in multipart_parts(r)[1]:
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
            out[str(ds.SOPInstanceUID)] = data
        return out

    def secrets(self, uid: str) -> list[str]:
        """The identifying values of an instance that must not reach a researcher."""
        ds = self.headers[uid]
        out = [str(ds.PatientID), str(ds.AccessionNumber)]
        pn = ds.PatientName
        out += [p for p in (pn.family_name, pn.given_name) if len(p) > 2]
        for kw in ("InstitutionName", "StationName", "StudyDescription", "SeriesDescription"):
            if ds.get(kw):
                out.append(str(ds.get(kw)))
        if ds.get("ReferringPhysicianName"):
            out.append(ds.ReferringPhysicianName.family_name)
        if ds.get("PatientBirthDate"):
            out.append(str(ds.PatientBirthDate))
        return [s for s in out if s]


@pytest.fixture(scope="module")
def site(module_node_factory, tmp_path_factory) -> Site:
    tmp = tmp_path_factory.mktemp("researcher")
    corpus = gen_dataset(tmp / "corpus", "--patients", "2", "--studies", "2", "--series", "1",
                         "--instances", "3", "--modality-mix", "MR=1",
                         "--ts-mix", "explicit=2,implicit=1,deflate=1,rle=1",
                         "--latin1-fraction", "0.5", "--seed", "42", "--pid-prefix", "RSV")
    # an explicit VR object to copy, so every resource (frames, rendered) can serve the copies
    first = sorted((i for i in corpus.instances if i.ts == pydicom.uid.ExplicitVRLittleEndian),
                   key=lambda i: (i.patient_id, i.study_date, i.sop_uid))[0]
    extra = tmp / "extra"
    # an object whose pixels carry text: withheld from researchers
    burned_path = rewrite(first.path, extra / "burned.dcm", BurnedInAnnotation="YES",
                          SOPInstanceUID=f"{ROOT}.1", InstanceNumber=901)
    # names and a private element inside nested sequences, a person name the profile table
    # does not list, an operator, an address
    ds = pydicom.dcmread(first.path)
    inner = Dataset()
    inner.PatientName = "HIDDEN^INNERNAME"
    inner.ScheduledProcedureStepStartDate = "20210110"
    inner.add_new(0x00291010, "LO", "INNER-PRIVATE")
    item = Dataset()
    item.ReferencedSOPClassUID = first.sop_class
    item.ReferencedSOPInstanceUID = first.sop_uid
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item])
    ds.OperatorsName = "OPERATOR^OLGA"
    ds.EvaluatorName = "EVALUATOR^EVE"
    ds.PatientAddress = "12 SECRET STREET"
    # after the pixel data: a private group and padding, which the streamed copy must drop
    ds.add_new(0x7FE10010, "LO", "TRAILER CREATOR")
    ds.add_new(0x7FE11010, "LO", "TRAILING-SECRET")
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 8)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ROOT}.2"
    ds.InstanceNumber = 902
    nested_path = extra / "nested.dcm"
    ds.save_as(nested_path, enforce_file_format=True)
    # storescu sends implicit VR objects as explicit VR; pynetdicom keeps an implicit copy so
    implicit = next(i for i in corpus.instances if i.ts == pydicom.uid.ImplicitVRLittleEndian)
    implicit_path = rewrite(implicit.path, extra / "implicit.dcm",
                            SOPInstanceUID=f"{ROOT}.3", InstanceNumber=903)

    keys, entries = {}, ""
    for who, role in (("researcher", "researcher"), ("clinician", "clinician")):
        keys[who], entry = new_key(f"trial-{who}", role)
        entries += "\n" + entry
    node = module_node_factory(start=False)
    node.config_path.write_text(node.config_path.read_text() + entries)
    node.start()
    r = dcmtk("storescu", "-xf", STORESCU_MIXED_CFG, "Mixed", "-aet", "STORESCU", "-aec",
              node.ae_title, "+sd", "+r", HOST, node.dicom_port, *corpus.top_dirs(), timeout=300)
    assert r.returncode == 0, f"storescu failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    store_ok(node, [burned_path, nested_path, implicit_path])
    return Site(node, corpus, keys, pydicom.dcmread(burned_path, stop_before_pixels=True),
                pydicom.dcmread(nested_path, stop_before_pixels=True), tmp,
                [pydicom.dcmread(implicit_path, stop_before_pixels=True)])


def patients(site: Site) -> dict[str, list]:
    out: dict[str, list] = {}
    for i in site.corpus.instances:
        out.setdefault(i.patient_id, []).append(i)
    return out


def assert_no_secret(site: Site, text: str, uids) -> None:
    for uid in uids:
        for s in site.secrets(uid):
            assert s not in text, f"{s!r} of {uid} in a researcher's answer"


def values(answer: dict, tag: str) -> list:
    return answer.get(tag, {}).get("Value", [])


def shifted_days(real: str, shifted: str) -> int:
    day = lambda s: datetime.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    return (day(real) - day(shifted)).days


# ----------------------------------------------------------------------------------- QIDO-RS
def test_qido_answers_hold_pseudonyms_and_shifted_dates(site):
    every = list(site.headers)
    paths = ["/dicom-web/studies?includefield=all", "/dicom-web/series?includefield=all",
             "/dicom-web/instances?includefield=all&limit=1000"]
    for study in site.corpus.studies():
        paths += [f"/dicom-web/studies/{study}/series?includefield=all",
                  f"/dicom-web/studies/{study}/instances?includefield=all"]
    for path in paths:
        r = site.get(path, "researcher")
        assert r.status_code == 200, (path, r.status_code, r.text)
        assert_no_secret(site, r.text, every)
        for a in r.json():
            assert values(a, "00120062") == ["YES"], path
            assert values(a, "00100020")[0].startswith("ANON-"), path
            assert "00100021" not in a and "00080080" not in a, path

    studies = {values(a, "0020000D")[0]: a
               for a in site.get("/dicom-web/studies?includefield=all", "researcher").json()}
    pseudonyms = {}
    for pid, insts in patients(site).items():
        by_study = {i.study_uid: i for i in insts}
        assert len(by_study) == 2
        names = {values(studies[u], "00100020")[0] for u in by_study}
        assert len(names) == 1, f"patient {pid} has pseudonyms {names}"
        pseudonyms[pid] = names.pop()
        assert values(studies[next(iter(by_study))], "00100010")[0]["Alphabetic"] == pseudonyms[pid]
        # dates moved back by one shift per patient: the interval between studies survives
        shifts = {shifted_days(i.study_date, values(studies[u], "00080020")[0])
                  for u, i in by_study.items()}
        assert len(shifts) == 1 and 1 <= shifts.pop() <= 365, pid
        for u in by_study:
            for emptied in ("00100030", "00080050", "00080090", "00200010"):
                assert not values(studies[u], emptied), (u, emptied)
    assert len(set(pseudonyms.values())) == len(pseudonyms), pseudonyms


def test_identifying_matching_keys_are_refused(site):
    uid = site.corpus.instances[0].study_uid
    for key, value in (("PatientName", "*"), ("PatientID", site.corpus.instances[0].patient_id),
                       ("00100030", "19480816"), ("AccessionNumber", "A*"),
                       ("ReferringPhysicianName", "Baker*"), ("StudyID", "1"),
                       ("StudyDate", "20000101-"), ("StudyDescription", "*MRI*"),
                       ("fuzzymatching", "true")):
        r = site.get(f"/dicom-web/studies?{key}={value}", "researcher")
        assert r.status_code == 400, (key, r.status_code, r.text)
        assert r.headers["content-type"].startswith(PROBLEM), key
        assert key in r.json()["detail"], r.json()
    for ok in (f"studies?StudyInstanceUID={uid}", "studies?ModalitiesInStudy=MR",
               "studies?PatientName=&limit=1", "series?BodyPartExamined=*&offset=1"):
        r = site.get(f"/dicom-web/{ok}", "researcher")
        assert r.status_code in (200, 204), (ok, r.status_code, r.text)
    r = site.get(f"/dicom-web/studies/{uid}/series?Modality=MR", "researcher")
    assert r.status_code == 200 and len(r.json()) == 1


# ----------------------------------------------------------------------------------- WADO-RS
def check_file_meta(data: bytes, ts: str) -> None:
    """Group length says where the meta group ends; the syntax is the stored one."""
    assert data[128:132] == b"DICM"
    assert struct.unpack_from("<HH2sH", data, 132) == (2, 0, b"UL", 4)
    (length,) = struct.unpack_from("<I", data, 140)
    assert 144 + length == meta_end(data)
    meta = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == ts


def private_or_overlay(ds: Dataset) -> list:
    return [e.tag for e in ds.iterall()
            if e.tag.is_private or e.tag.group >> 8 in (0x50, 0x60)]


def test_wado_retrieve_is_de_identified_with_pixels_untouched(site):
    every_uid, syntaxes = set(), set()
    searched = {values(a, "0020000D")[0]: a
                for a in site.get("/dicom-web/studies", "researcher").json()}
    for study, insts in site.corpus.studies().items():
        stored = site.retrieve(f"/dicom-web/studies/{study}", "clinician")
        served = site.retrieve(f"/dicom-web/studies/{study}", "researcher")
        # the objects say what the search said: one pseudonym, one shift
        for data in served.values():
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
            assert values(searched[study], "00100020") == [ds.PatientID]
            assert values(searched[study], "00080020") == [ds.StudyDate]
        withheld = {site.burned.SOPInstanceUID} & set(stored)
        assert set(served) == set(stored) - withheld, study
        for uid, data in served.items():
            every_uid.add(uid)
            full = pydicom.dcmread(pydicom.filebase.DicomBytesIO(stored[uid]))
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
            check_file_meta(data, full.file_meta.TransferSyntaxUID)
            syntaxes.add(full.file_meta.TransferSyntaxUID)
            assert ds.PatientIdentityRemoved == "YES"
            assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
            assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == \
                ["113100", "113110", "113107"]
            assert str(ds.PatientID).startswith("ANON-") and str(ds.PatientName) == ds.PatientID
            for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                       "FrameOfReferenceUID", "Rows", "Columns", "BitsStored", "Modality"):
                assert ds.get(kw) == full.get(kw), kw
            for kw in ("InstitutionName", "StationName", "StudyDescription", "SeriesDescription",
                       "IssuerOfPatientID", "PatientAge", "OperatorsName", "EvaluatorName",
                       "PatientAddress"):
                assert kw not in ds, kw
            for kw in ("PatientBirthDate", "PatientSex", "AccessionNumber",
                       "ReferringPhysicianName", "StudyID"):
                assert not ds.get(kw), kw
            assert not private_or_overlay(ds), private_or_overlay(ds)
            assert ds.StudyDate != full.StudyDate
            assert ds.PixelData == full.PixelData, uid
            raw = data.decode("latin-1")
            assert_no_secret(site, raw, [uid])
    assert every_uid >= {i.sop_uid for i in site.corpus.instances}
    # streamed (explicit, implicit, RLE) and rewritten whole (deflated) were both exercised
    assert syntaxes >= {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian,
                        pydicom.uid.DeflatedExplicitVRLittleEndian, pydicom.uid.RLELossless}, \
        syntaxes


def test_wado_uri_serves_researchers_the_same_de_identified_view(site):
    """WADO-URI is a front for WADO-RS: the object a researcher gets at /wado is the one
    WADO-RS gives them, and the burned-in one is refused there too."""
    inst = next(i for i in site.corpus.instances if i.sop_uid != site.burned.SOPInstanceUID)
    path = (f"/wado?requestType=WADO&studyUID={inst.study_uid}&seriesUID={inst.series_uid}"
            f"&objectUID={inst.sop_uid}&contentType=application/dicom&transferSyntax=*")
    r = site.get(path, "researcher")
    assert r.status_code == 200, r.text
    served = site.retrieve(f"/dicom-web/studies/{inst.study_uid}/series/{inst.series_uid}"
                           f"/instances/{inst.sop_uid}", "researcher")
    assert r.content == served[inst.sop_uid]
    assert_no_secret(site, r.content.decode("latin-1"), [inst.sop_uid])
    b = site.burned
    r = site.get(f"/wado?requestType=WADO&studyUID={b.StudyInstanceUID}"
                 f"&seriesUID={b.SeriesInstanceUID}&objectUID={b.SOPInstanceUID}"
                 "&contentType=application/dicom", "researcher")
    assert r.status_code == 403, r.text


def test_converted_and_decoded_instances_are_de_identified(site):
    """Asked for explicit VR, an implicit VR object is converted and an RLE one decoded
    before they are de-identified (whole, in memory, one at a time)."""
    explicit = pydicom.uid.ExplicitVRLittleEndian
    accept = {"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={explicit}'}
    implicit = next(ds for ds in site.headers.values() if ds.InstanceNumber == 903)
    rle = next(i for i in site.corpus.instances if i.ts == pydicom.uid.RLELossless)
    for study, series, sop in ((implicit.StudyInstanceUID, implicit.SeriesInstanceUID,
                                implicit.SOPInstanceUID), (rle.study_uid, rle.series_uid, rle.sop_uid)):
        path = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
        got = {}
        for who in ("clinician", "researcher"):
            r = site.get(path, who, headers=accept)
            assert r.status_code == 200, (who, r.text)
            ((headers, data),) = multipart_parts(r)[1]
            assert headers["content-type"] == f"application/dicom; transfer-syntax={explicit}"
            got[who] = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
            check_file_meta(data, explicit)
        full, ds = got["clinician"], got["researcher"]
        assert ds.PatientIdentityRemoved == "YES" and "PatientIdentityRemoved" not in full
        assert str(ds.PatientID).startswith("ANON-") and "InstitutionName" not in ds
        assert not private_or_overlay(ds)
        assert ds.SOPInstanceUID == sop and ds.PixelData == full.PixelData


def test_nested_sequences_are_cleaned(site):
    n = site.nested
    path = (f"/dicom-web/studies/{n.StudyInstanceUID}/series/{n.SeriesInstanceUID}"
            f"/instances/{n.SOPInstanceUID}")
    (data,) = site.retrieve(path, "researcher").values()
    assert b"INNERNAME" not in data and b"INNER-PRIVATE" not in data
    assert b"OPERATOR" not in data and b"EVALUATOR" not in data and b"SECRET" not in data
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    assert 0xFFFCFFFC not in ds and not private_or_overlay(ds)
    (stored,) = site.retrieve(path, "clinician").values()
    assert b"TRAILING-SECRET" in stored
    assert ds.PixelData == pydicom.dcmread(pydicom.filebase.DicomBytesIO(stored)).PixelData
    # nothing after the pixel data element: the file ends with its value
    assert data.endswith(ds.PixelData)
    item = ds.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID == n.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    inner = item.PurposeOfReferenceCodeSequence[0]
    assert str(inner.PatientName) == ds.PatientID
    shift = shifted_days("20210110", inner.ScheduledProcedureStepStartDate)
    assert shift == shifted_days(n.StudyDate, ds.StudyDate)


def test_metadata_is_de_identified_and_leaves_out_the_withheld(site):
    b = site.burned
    r = site.get(f"/dicom-web/studies/{b.StudyInstanceUID}/metadata", "researcher")
    assert r.status_code == 200, r.text
    uids = [values(a, "00080018")[0] for a in r.json()]
    assert b.SOPInstanceUID not in uids and uids
    assert_no_secret(site, r.text, uids)
    assert all(values(a, "00120062") == ["YES"] for a in r.json())
    assert not any(k.startswith(("0009", "0029")) for a in r.json() for k in a)


def test_burned_in_annotation_is_withheld(site):
    b = site.burned
    inst = (f"/dicom-web/studies/{b.StudyInstanceUID}/series/{b.SeriesInstanceUID}"
            f"/instances/{b.SOPInstanceUID}")
    for path, headers in ((inst, AS_STORED), (inst + "/metadata", {}),
                          (inst + "/rendered", {"Accept": "image/png"}),
                          (inst + "/frames/1", {"Accept": "multipart/related; type=\"application/octet-stream\""})):
        r = site.get(path, "researcher", headers=headers)
        assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith(PROBLEM)
        assert "BurnedInAnnotation" in r.json()["detail"]
        # the clinician is given it
        assert site.get(path, "clinician", headers=headers).status_code == 200, path


def test_frames_and_rendered_of_a_clean_instance(site):
    i = next(i for i in site.corpus.instances if i.ts == pydicom.uid.ExplicitVRLittleEndian)
    inst = f"/dicom-web/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"
    r = site.get(inst + "/rendered", "researcher", headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    r = site.get(inst + "/frames/1", "researcher",
                 headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status_code == 200
    (_, frame), = multipart_parts(r)[1]
    assert frame == pydicom.dcmread(i.path).PixelData
    r = site.get(inst + "/bulkdata/00091010", "researcher")
    assert r.status_code == 403 and r.headers["content-type"].startswith(PROBLEM)


def dciodvfy_errors(path: Path) -> set[str]:
    r = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True,
                       timeout=60)
    return {line.strip() for line in (r.stdout + r.stderr).splitlines()
            if line.startswith("Error")}


def test_de_identified_objects_are_as_valid_as_the_stored(site):
    """dciodvfy (dicom3tools) finds no IOD error in a de-identified object that the stored
    one does not have already."""
    for i in site.corpus.instances[:4]:
        path = f"/dicom-web/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"
        (stored,) = site.retrieve(path, "clinician").values()
        (served,) = site.retrieve(path, "researcher").values()
        a, b = site.tmp / "stored.dcm", site.tmp / "served.dcm"
        a.write_bytes(stored)
        b.write_bytes(served)
        new = dciodvfy_errors(b) - dciodvfy_errors(a)
        assert not new, (i.ts, new)


def test_dcmdump_shows_no_patient_name(site):
    i = site.corpus.instances[0]
    path = f"/dicom-web/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}"
    (data,) = site.retrieve(path, "researcher").values()
    f = site.tmp / "researcher.dcm"
    f.write_bytes(data)
    r = dcmtk("dcmdump", "+L", f, check=True)
    assert "PatientIdentityRemoved" in r.stdout and "[YES]" in r.stdout
    name = pydicom.dcmread(i.path, stop_before_pixels=True).PatientName
    assert name.family_name not in r.stdout and i.patient_id not in r.stdout
    assert re.search(r"\(0010,0010\) PN \[ANON-[0-9A-F]{16}\]", r.stdout), r.stdout[:2000]


# ----------------------------------------------------------------------------------- the rest
def test_clinician_sees_real_data_and_rest_refuses_researchers(site):
    i = site.corpus.instances[0]
    r = site.get(f"/dicom-web/studies?StudyInstanceUID={i.study_uid}&includefield=all",
                 "clinician")
    assert r.status_code == 200
    assert values(r.json()[0], "00100020") == [i.patient_id]
    assert "00120062" not in r.json()[0]
    for path in ("/api/v1/patients", "/api/v1/studies", f"/api/v1/studies/{i.study_uid}",
                 f"/api/v1/instances/{i.sop_uid}", "/api/v1/changes", "/api/v1/audit"):
        r = site.get(path, "researcher")
        assert r.status_code == 403, (path, r.status_code)
        assert r.headers["content-type"].startswith(PROBLEM)
        assert site.get(path, "clinician").status_code == (403 if "audit" in path else 200), path
    assert site.get("/api/v1/status", "researcher").status_code == 200


def test_researcher_reads_are_audited_with_the_real_patient(site, schema):
    i = site.corpus.instances[-1]
    r = site.get(f"/dicom-web/studies/{i.study_uid}/series/{i.series_uid}", "researcher",
                 headers=AS_STORED)
    assert r.status_code == 200
    out = run_pacsgrid(["audit", "search", "--data", site.node.data_dir, "--json",
                        "--event", "instances-transferred", "--xml"], timeout=60)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    mine = [x for x in records if x["user"] == "trial-researcher" and i.study_uid in x["study_uids"]]
    assert mine, records[-3:]
    assert mine[-1]["patient_id"] == i.patient_id
    assert "de-identified" in mine[-1]["xml"]
    assert_valid(schema, mine[-1]["xml"].encode(), "a researcher's retrieve")


def test_nothing_stored_changed_and_the_node_runs(site):
    for study in site.corpus.studies():
        again = site.retrieve(f"/dicom-web/studies/{study}", "clinician")
        for uid, data in again.items():
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), stop_before_pixels=True)
            assert "PatientIdentityRemoved" not in ds
            assert ds.PatientID == site.headers[uid].PatientID
            assert ds.PatientName == site.headers[uid].PatientName
    assert site.node.running()
    r = site.get("/api/v1/status", "clinician")
    assert r.status_code == 200


def test_pydicom_sample_files_come_de_identified(node_factory):
    """pydicom's own sample objects (many SOP classes and syntaxes, odd structures): each is
    served de-identified or withheld, never as stored, with its pixel data unchanged."""
    samples = pydicom_sample_files()
    keys, entries = {}, ""
    for who in ("researcher", "clinician"):
        keys[who], entry = new_key(f"samples-{who}", who)
        entries += "\n" + entry
    node = node_factory(start=False)
    node.config_path.write_text(node.config_path.read_text() + entries)
    node.start()
    for k in range(0, len(samples), 40):
        store(node, samples[k:k + 40])
    served = withheld = 0
    for path in samples:
        src = pydicom.dcmread(path, stop_before_pixels=True)
        url = (f"/dicom-web/studies/{src.StudyInstanceUID}/series/{src.SeriesInstanceUID}"
               f"/instances/{src.SOPInstanceUID}")
        full = get_as(node, keys["clinician"], url, headers=AS_STORED)
        if full.status_code != 200:
            continue  # not stored (refused at C-STORE): nothing to serve either way
        r = get_as(node, keys["researcher"], url, headers=AS_STORED)
        if str(src.get("BurnedInAnnotation", "")).upper() == "YES":
            assert r.status_code == 403, (path.name, r.status_code)
            withheld += 1
            continue
        assert r.status_code == 200, (path.name, r.status_code, r.text[:300])
        ((_, data),) = multipart_parts(r)[1]
        ((_, stored),) = multipart_parts(full)[1]
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        orig = pydicom.dcmread(pydicom.filebase.DicomBytesIO(stored))
        check_file_meta(data, orig.file_meta.TransferSyntaxUID)
        assert ds.PatientIdentityRemoved == "YES", path.name
        assert ds.SOPInstanceUID == orig.SOPInstanceUID, path.name
        assert not private_or_overlay(ds), (path.name, private_or_overlay(ds))
        assert not [e.tag for e in ds.iterall() if e.VR == "PN" and e.value
                    and e.tag not in (0x00100010,)], path.name
        if orig.get("PatientName"):
            assert str(ds.PatientName).startswith("ANON-"), path.name
        if "PixelData" in orig:
            assert ds.PixelData == orig.PixelData, path.name
        served += 1
    print(f"pydicom samples: {served} served de-identified, {withheld} withheld, of {len(samples)}")
    assert served >= 20, (served, withheld)
    assert node.running()
