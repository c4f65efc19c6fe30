"""QIDO-RS with real clients (dicomweb-client, requests) against a node loaded by dcmtk storescu
and pynetdicom: exact answer sets at every level and scope, every matching kind, includefield and
`all`, paging, fuzzy names, counts, DICOM JSON encoding, and every error as problem+json."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from harness import DEFAULT_ISSUER, STORESCU_MIXED_CFG, dcmtk, store_ok

DICOM_JSON = "application/dicom+json"
PROBLEM_JSON = "application/problem+json"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


# --------------------------------------------------------------------------- expectations
def wc_match(pattern: str, value: str, ci: bool = False) -> bool:
    """DICOM wildcard matching (PS3.4 C.2.2.2.4): '*' any run, '?' one character."""
    if ci:
        pattern, value = pattern.lower(), value.lower()
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.S) is not None


def in_range(query: str, value: str) -> bool:
    lo, hi = query.split("-", 1)
    return bool(value) and (not lo or value >= lo) and (not hi or value <= hi)


@dataclass
class Study:
    uid: str
    pid: str
    issuer: str
    name: str
    date: str
    time: str
    accession: str
    description: str
    modalities: set = field(default_factory=set)
    series: dict = field(default_factory=dict)  # series uid -> list of Inst

    @property
    def instances(self) -> list:
        return [i for s in self.series.values() for i in s]


def study_table(corpus) -> dict[str, Study]:
    out: dict[str, Study] = {}
    for i in corpus.instances:
        st = out.get(i.study_uid)
        if st is None:
            st = out[i.study_uid] = Study(i.study_uid, i.patient_id, i.issuer or DEFAULT_ISSUER,
                                          i.patient_name, i.study_date, i.study_time,
                                          i.accession, i.study_description)
        st.modalities.add(i.modality)
        st.series.setdefault(i.series_uid, []).append(i)
    return out


@dataclass
class Loaded:
    node: object
    corpus: object
    studies: dict

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.node.http_port}/dicom-web"

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(url=self.base)

    def get(self, path: str, params=None, headers=None) -> requests.Response:
        return requests.get(self.base + path, params=params, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def loaded(module_node_factory, corpora) -> Loaded:
    node = module_node_factory()
    mixed = corpora.mixed
    r = dcmtk("storescu", "-xf", STORESCU_MIXED_CFG, "Mixed", "-aet", "STORESCU",
              "-aec", node.ae_title, "+sd", "+r", "127.0.0.1", node.dicom_port,
              *mixed.top_dirs(), timeout=300)
    assert r.returncode == 0, f"storescu exited {r.returncode}:\n{(r.stdout + r.stderr)[-4000:]}"
    store_ok(node, corpora.issuers.instances)
    corpus = mixed + corpora.issuers
    return Loaded(node, corpus, study_table(corpus))


# --------------------------------------------------------------------------- helpers
def values(ds: dict, tag: str) -> list:
    return ds.get(tag, {}).get("Value", [])


def one(ds: dict, tag: str):
    v = values(ds, tag)
    assert len(v) == 1, f"{tag}: expected one value, got {ds.get(tag)}"
    return v[0]


def uids(answers: list, tag: str) -> set:
    got = [one(a, tag) for a in answers]
    assert len(got) == len(set(got)), f"{tag} answered more than once: {got}"
    return set(got)


def nontrivial(expected: set, everything: set, what: str) -> set:
    assert expected and expected != everything, f"test data problem: {what} selects {len(expected)}"
    return expected


def assert_problem(rsp: requests.Response, status: int, *needles: str) -> dict:
    assert rsp.status_code == status, f"{rsp.status_code} {rsp.text}"
    assert rsp.headers["Content-Type"] == PROBLEM_JSON
    body = rsp.json()
    assert body["status"] == status
    assert body["title"]
    for n in needles:
        assert n in body["detail"], f"{n!r} not in detail {body['detail']!r}"
    return body


# --------------------------------------------------------------------------- every level
def test_studies_all_with_default_attributes_and_counts(loaded):
    answers = loaded.client().search_for_studies()
    assert uids(answers, "0020000D") == set(loaded.studies)
    for a in answers:
        st = loaded.studies[one(a, "0020000D")]
        assert one(a, "00100020") == st.pid
        assert one(a, "00100021") == st.issuer
        assert a["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": st.name}]}
        assert one(a, "00080020") == st.date
        assert one(a, "00080050") == st.accession
        assert a["00201206"] == {"vr": "IS", "Value": [len(st.series)]}
        assert a["00201208"] == {"vr": "IS", "Value": [len(st.instances)]}
        assert set(values(a, "00080061")) == st.modalities
        assert a["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
        assert a["00081190"]["vr"] == "UR"
        # not a default study attribute, not asked for
        assert "00081030" not in a
        assert "0020000E" not in a


def test_answers_are_dicom_json_with_retrieve_urls_from_the_host(loaded):
    st = next(iter(loaded.studies.values()))
    rsp = loaded.get("/studies", {"StudyInstanceUID": st.uid})
    assert rsp.status_code == 200
    assert rsp.headers["Content-Type"] == DICOM_JSON
    [a] = rsp.json()
    port = loaded.node.http_port
    assert one(a, "00081190") == f"http://127.0.0.1:{port}/dicom-web/studies/{st.uid}"
    se_uid, insts = next(iter(st.series.items()))
    [s] = loaded.get(f"/studies/{st.uid}/series", {"SeriesInstanceUID": se_uid}).json()
    assert one(s, "00081190") == f"http://127.0.0.1:{port}/dicom-web/studies/{st.uid}/series/{se_uid}"
    i = insts[0]
    [x] = loaded.get(f"/studies/{st.uid}/series/{se_uid}/instances",
                     {"SOPInstanceUID": i.sop_uid}).json()
    assert one(x, "00081190") == (f"http://127.0.0.1:{port}/dicom-web/studies/{st.uid}"
                                  f"/series/{se_uid}/instances/{i.sop_uid}")
    # one log line per search
    assert loaded.node.log_text().count("QIDO-RS search") >= 3


def test_series_at_every_scope(loaded):
    client = loaded.client()
    all_series = {se: insts for st in loaded.studies.values() for se, insts in st.series.items()}
    answers = client.search_for_series()
    assert uids(answers, "0020000E") == set(all_series)
    for a in answers:
        insts = all_series[one(a, "0020000E")]
        assert one(a, "0020000D") == insts[0].study_uid
        assert one(a, "00080060") == insts[0].modality
        assert one(a, "00200011") == insts[0].series_number
        assert a["00201209"] == {"vr": "IS", "Value": [len(insts)]}
        # unscoped: study attributes come too
        assert one(a, "00100020") == insts[0].patient_id
    for st in loaded.studies.values():
        scoped = client.search_for_series(study_instance_uid=st.uid)
        assert uids(scoped, "0020000E") == set(st.series)
        for a in scoped:
            assert one(a, "0020000D") == st.uid
            assert "00100020" not in a  # the study is fixed by the URL


def test_instances_at_every_scope(loaded):
    client = loaded.client()
    everything = {i.sop_uid: i for i in loaded.corpus.instances}
    answers = client.search_for_instances()
    assert uids(answers, "00080018") == set(everything)
    for a in answers:
        i = everything[one(a, "00080018")]
        assert one(a, "00080016") == i.sop_class
        assert one(a, "0020000D") == i.study_uid
        assert one(a, "0020000E") == i.series_uid
        assert a["00200013"] == {"vr": "IS", "Value": [i.instance_number]}
        assert one(a, "00100020") == i.patient_id
        assert one(a, "00080060") == i.modality
    for st in loaded.studies.values():
        got = client.search_for_instances(study_instance_uid=st.uid)
        assert uids(got, "00080018") == {i.sop_uid for i in st.instances}
        assert all("00100020" not in a and "00080060" in a for a in got)
        for se, insts in st.series.items():
            got = client.search_for_instances(study_instance_uid=st.uid, series_instance_uid=se)
            assert uids(got, "00080018") == {i.sop_uid for i in insts}
            assert all("00080060" not in a and one(a, "0020000E") == se for a in got)


# --------------------------------------------------------------------------- matching
STUDY_CASES = [
    # (name, params, predicate over Study)
    ("single", {"PatientID": "MIX000002"}, lambda s: s.pid == "MIX000002"),
    ("tag", {"00100020": "MIX000002"}, lambda s: s.pid == "MIX000002"),
    ("wildcard-star", {"StudyDescription": "XR*"}, lambda s: s.description.startswith("XR")),
    ("wildcard-question", {"AccessionNumber": "A8????????"},
     lambda s: wc_match("A8????????", s.accession)),
    ("pn-wildcard-any-case", {"PatientName": "m*"}, lambda s: wc_match("m*", s.name, ci=True)),
    ("pn-latin1", {"PatientName": "HØJ^Søren"}, lambda s: s.name == "HØJ^Søren"),
    ("date-single", {"StudyDate": "20200828"}, lambda s: s.date == "20200828"),
    ("date-closed", {"StudyDate": "20180101-20201231"},
     lambda s: in_range("20180101-20201231", s.date)),
    ("date-open-lower", {"StudyDate": "20210101-"}, lambda s: in_range("20210101-", s.date)),
    ("date-open-upper", {"00080020": "-20181231"}, lambda s: in_range("-20181231", s.date)),
    ("time-range", {"StudyTime": "120000-"}, lambda s: in_range("120000-", s.time)),
    ("modality-in-study", {"ModalitiesInStudy": "CT"}, lambda s: "CT" in s.modalities),
    ("modality-list", {"ModalitiesInStudy": "CT,MR"}, lambda s: bool({"CT", "MR"} & s.modalities)),
    ("combined", {"PatientID": "MIX*", "StudyDate": "20200101-"},
     lambda s: s.pid.startswith("MIX") and s.date >= "20200101"),
]


@pytest.mark.parametrize("name,params,pred", STUDY_CASES, ids=[c[0] for c in STUDY_CASES])
def test_study_matching(loaded, name, params, pred):
    expected = nontrivial({s.uid for s in loaded.studies.values() if pred(s)},
                          set(loaded.studies), name)
    answers = loaded.client().search_for_studies(search_filters=params)
    assert uids(answers, "0020000D") == expected


def test_uid_lists_comma_or_backslash(loaded):
    some = sorted(loaded.studies)[:3]
    client = loaded.client()
    for sep in (",", "\\"):
        got = client.search_for_studies(search_filters={"StudyInstanceUID": sep.join(some)})
        assert uids(got, "0020000D") == set(some)
    st = loaded.studies[some[0]]
    series = sorted(st.series)
    got = client.search_for_series(study_instance_uid=st.uid,
                                   search_filters={"0020000E": ",".join(series)})
    assert uids(got, "0020000E") == set(series)


def test_series_and_instance_matching_and_relational_keys(loaded):
    client = loaded.client()
    insts = loaded.corpus.instances
    mr_series = nontrivial({i.series_uid for i in insts if i.modality == "MR"},
                           {i.series_uid for i in insts}, "Modality=MR")
    assert uids(client.search_for_series(search_filters={"Modality": "MR"}),
                "0020000E") == mr_series
    ct = nontrivial({i.sop_uid for i in insts if i.sop_class == CT_CLASS},
                    {i.sop_uid for i in insts}, "CT class")
    assert uids(client.search_for_instances(search_filters={"SOPClassUID": CT_CLASS}),
                "00080018") == ct
    first = {i.sop_uid for i in insts if i.instance_number == 1}
    assert uids(client.search_for_instances(search_filters={"InstanceNumber": "1"}),
                "00080018") == first
    # patient and study keys on instance and series searches
    p4 = {i.sop_uid for i in insts if i.patient_id == "MIX000004"}
    assert uids(client.search_for_instances(search_filters={"PatientID": "MIX000004"}),
                "00080018") == p4
    xr = {i.series_uid for i in insts if i.study_description.startswith("XR")}
    assert uids(client.search_for_series(search_filters={"StudyDescription": "XR*"}),
                "0020000E") == xr


def test_patient_ids_are_per_issuer(loaded):
    client = loaded.client()
    both = client.search_for_studies(search_filters={"PatientID": "DUP000001"})
    assert sorted(one(a, "00100021") for a in both) == ["HOSP_A", "HOSP_B"]
    dup_uids = {s.uid for s in loaded.studies.values() if s.pid == "DUP000001"}
    assert uids(both, "0020000D") == dup_uids
    a_only = client.search_for_studies(
        search_filters={"PatientID": "DUP000001", "IssuerOfPatientID": "HOSP_A"})
    assert [one(a, "00100021") for a in a_only] == ["HOSP_A"]
    assert uids(a_only, "0020000D") == {s.uid for s in loaded.studies.values()
                                        if s.pid == "DUP000001" and s.issuer == "HOSP_A"}
    none = client.search_for_studies(search_filters={"PatientID": "NOISS000001"})
    assert [one(a, "00100021") for a in none] == [DEFAULT_ISSUER]
    # and at the instance level, with the issuer key by tag
    got = client.search_for_instances(
        search_filters={"PatientID": "DUP000001", "00100021": "HOSP_B"})
    assert uids(got, "00080018") == {i.sop_uid for i in loaded.corpus.instances
                                     if i.patient_id == "DUP000001" and i.issuer == "HOSP_B"}


def test_no_match_is_204_and_an_empty_list(loaded):
    rsp = loaded.get("/studies", {"PatientID": "NOBODY"})
    assert rsp.status_code == 204
    assert rsp.content == b""
    assert loaded.client().search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    st = next(iter(loaded.studies))
    assert loaded.get(f"/studies/{st}/series", {"Modality": "XX"}).status_code == 204
    assert loaded.get("/studies/1.2.3.4.5.6.7/instances").status_code == 204


# --------------------------------------------------------------------------- fuzzy
def test_fuzzy_matching_of_person_names(loaded):
    client = loaded.client()
    mueller = {s.uid for s in loaded.studies.values() if s.pid == "MIX000003"}
    hoj = {s.uid for s in loaded.studies.values() if s.pid == "MIX000004"}
    # a given-name prefix, any case: only with fuzzy matching
    assert client.search_for_studies(search_filters={"PatientName": "jürg"}) == []
    got = client.search_for_studies(search_filters={"PatientName": "jürg"}, fuzzymatching=True)
    assert uids(got, "0020000D") == mueller
    # several words, any order, any case
    got = client.search_for_studies(search_filters={"PatientName": "søren høj"},
                                    fuzzymatching=True)
    assert uids(got, "0020000D") == hoj
    # a word must begin a component: the middle of one does not match
    assert client.search_for_studies(search_filters={"PatientName": "ürgen"},
                                     fuzzymatching=True) == []
    # fuzzymatching=false is literal matching
    assert client.search_for_studies(search_filters={"PatientName": "MÜLLER^Jürgen^D"},
                                     fuzzymatching=False) != []
    # with paging: the filter runs before offset and limit
    p1 = client.search_for_studies(search_filters={"PatientName": "jürg"}, fuzzymatching=True,
                                   limit=1)
    p2 = client.search_for_studies(search_filters={"PatientName": "jürg"}, fuzzymatching=True,
                                   limit=1, offset=1)
    assert uids(p1 + p2, "0020000D") == mueller


# --------------------------------------------------------------------------- includefield
def test_includefield_by_keyword_tag_list_and_all(loaded):
    client = loaded.client()
    st = next(s for s in loaded.studies.values() if s.description)
    [a] = client.search_for_studies(search_filters={"StudyInstanceUID": st.uid},
                                    fields=["StudyDescription"])
    assert one(a, "00081030") == st.description
    [a] = loaded.get("/studies", [("StudyInstanceUID", st.uid),
                                  ("includefield", "00081030,StudyID"),
                                  ("includefield", "00080062")]).json()
    assert one(a, "00081030") == st.description
    assert "00200010" in a
    assert set(values(a, "00080062")) == {i.sop_class for i in st.instances}
    [a] = loaded.get("/studies", {"StudyInstanceUID": st.uid, "includefield": "all"}).json()
    for tag in ("00081030", "00080062", "00200010", "00100021", "00080090"):
        assert tag in a, tag
    assert "0020000E" not in a
    # explicitly asked but not in the index: present, empty
    se = next(iter(st.series))
    [s] = client.search_for_series(study_instance_uid=st.uid,
                                   search_filters={"SeriesInstanceUID": se},
                                   fields=["PerformedProcedureStepStartDate"])
    assert s["00400244"] == {"vr": "DA"}
    [i] = client.search_for_instances(study_instance_uid=st.uid, series_instance_uid=se,
                                      search_filters={"SOPInstanceUID": st.series[se][0].sop_uid},
                                      fields=["Rows", "00280011"])
    assert i["00280010"] == {"vr": "US"} and i["00280011"] == {"vr": "US"}
    # ...and left out when nobody asked
    [i] = client.search_for_instances(study_instance_uid=st.uid, series_instance_uid=se,
                                      search_filters={"SOPInstanceUID": st.series[se][0].sop_uid})
    assert "00280010" not in i


def test_keys_are_returned_and_unsupported_keys_are_ignored_with_a_warning(loaded):
    rsp = loaded.get("/studies", {"StudyDescription": "XR*"})
    assert all("00081030" in a for a in rsp.json())
    rsp = loaded.get("/instances", {"Rows": "512"})
    assert rsp.status_code == 200
    assert "Rows" in rsp.headers["Warning"] and rsp.headers["Warning"].startswith("299 ")
    got = rsp.json()
    assert uids(got, "00080018") == {i.sop_uid for i in loaded.corpus.instances}
    assert all(a["00280010"] == {"vr": "US"} for a in got)


# --------------------------------------------------------------------------- paging
def test_limit_and_offset_page_through_every_study_once(loaded):
    client = loaded.client()
    n = len(loaded.studies)
    seen = []
    offset = 0
    while True:
        rsp = loaded.get("/studies", {"limit": 3, "offset": offset})
        if offset >= n:
            assert rsp.status_code == 204
            assert "Warning" not in rsp.headers
            break
        page = rsp.json()
        assert len(page) == min(3, n - offset)
        if offset + 3 < n:
            assert rsp.headers["Warning"].startswith("299 ")
            assert "additional results" in rsp.headers["Warning"]
        else:
            assert "Warning" not in rsp.headers
        seen += [one(a, "0020000D") for a in page]
        offset += 3
    assert sorted(seen) == sorted(loaded.studies)
    # dicomweb-client follows the pages itself
    got = client.search_for_studies(limit=4, get_remaining=True)
    assert [one(a, "0020000D") for a in got] == seen
    # instances of a study, one at a time
    st = max(loaded.studies.values(), key=lambda s: len(s.instances))
    one_by_one = [one(a, "00080018")
                  for k in range(len(st.instances))
                  for a in client.search_for_instances(study_instance_uid=st.uid, limit=1,
                                                       offset=k)]
    assert sorted(one_by_one) == sorted(i.sop_uid for i in st.instances)
    assert loaded.get("/studies", {"limit": 0}).status_code == 204


# --------------------------------------------------------------------------- negotiation
@pytest.mark.parametrize("accept", [None, "application/dicom+json", "application/json", "*/*",
                                    "application/*", "text/html, application/dicom+json;q=0.5",
                                    'multipart/related; type="application/dicom+xml", */*;q=0.1'])
def test_acceptable_media_types(loaded, accept):
    headers = {} if accept is None else {"Accept": accept}
    rsp = loaded.get("/studies", {"limit": 1}, headers=headers)
    assert rsp.status_code == 200, rsp.text
    assert rsp.headers["Content-Type"] == DICOM_JSON


@pytest.mark.parametrize("accept", ["application/xml", 'multipart/related; type="application/dicom+xml"',
                                    "text/html", "application/dicom+json;q=0"])
def test_unacceptable_media_types_are_406(loaded, accept):
    assert_problem(loaded.get("/studies", headers={"Accept": accept}), 406,
                   "application/dicom+json")


def test_accept_query_parameter_overrides_the_header(loaded):
    assert_problem(loaded.get("/series", {"accept": "text/html"}), 406)
    rsp = loaded.get("/series", {"accept": DICOM_JSON, "limit": 1}, headers={"Accept": "text/html"})
    assert rsp.status_code == 200


# --------------------------------------------------------------------------- errors
ERRORS = [
    ("/studies", {"foo": "bar"}, "foo"),
    ("/studies", {"PatientNam": "X"}, "PatientNam"),
    ("/studies", {"limit": "-1"}, "limit"),
    ("/studies", {"limit": "ten"}, "limit"),
    ("/series", {"offset": "-3"}, "offset"),
    ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching"),
    ("/studies", {"includefield": "NotAKeyword"}, "includefield"),
    ("/studies", {"StudyDate": "2020-13-01"}, "StudyDate"),
    ("/studies", {"00080020": "20201301"}, "00080020"),
    ("/studies", {"StudyDate": "20201231-20200101"}, "StudyDate"),
    ("/studies", {"StudyInstanceUID": "1.2.*"}, "StudyInstanceUID"),
    ("/instances", {"SOPInstanceUID": "1.2,abc"}, "SOPInstanceUID"),
    ("/studies", {"Modality": "CT"}, "Modality"),
    ("/series", {"SOPClassUID": CT_CLASS}, "SOPClassUID"),
    ("/studies", {"NumberOfStudyRelatedInstances": "3"}, "NumberOfStudyRelatedInstances"),
    ("/instances", {"InstanceNumber": "one"}, "InstanceNumber"),
    ("/studies/1.2.abc/series", {}, "1.2.abc"),
    ("/studies/1.2.3/series/1..2/instances", {}, "1..2"),
    ("/studies/1.2.3/instances", {"StudyTime": "25"}, "StudyTime"),
]


@pytest.mark.parametrize("path,params,needle", ERRORS, ids=[f"{p}?{q}" for p, q, _ in ERRORS])
def test_bad_requests_are_400_problem_json(loaded, path, params, needle):
    assert_problem(loaded.get(path, params), 400, needle)


def test_repeated_limit_is_refused(loaded):
    assert_problem(loaded.get("/studies", [("limit", "1"), ("limit", "2")]), 400, "limit")
    assert_problem(loaded.get("/studies", [("PatientID", "A"), ("00100020", "B")]), 400,
                   "00100020")
