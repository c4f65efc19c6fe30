"""C-FIND: exact answers for every kind of matching at every level in both information models,
return keys with counts, Latin-1 names, patients per issuer, C-CANCEL."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from pynetdicom import build_context

from harness import (CANCEL, DEFAULT_ISSUER, MODELS, PENDING, SUCCESS, association, find, hexs,
                     query_dataset, status_of, store_ok)


# --------------------------------------------------------------------------- expectations
def wc_match(pattern: str, value: str) -> bool:
    """DICOM wildcard matching (PS3.4 C.2.2.2.4): '*' any run, '?' one character."""
    if pattern in ("", "*"):
        return True
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.S) is not None


def range_match(query: str, value: str) -> bool:
    if query == "":
        return True
    if "-" in query:
        lo, hi = query.split("-", 1)
        return bool(value) and (not lo or value >= lo) and (not hi or value <= hi)
    return value == query


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


@pytest.fixture(scope="module")
def loaded(module_node_factory, corpora):
    corpus = corpora.mixed + corpora.issuers + corpora.big
    node = module_node_factory()
    store_ok(node, corpus.instances)
    return node, corpus, study_table(corpus)


def nontrivial(expected: set, everything: set, what: str) -> set:
    assert expected and expected != everything, f"test data problem: {what} selects {len(expected)}"
    return expected


# --------------------------------------------------------------------------- PATIENT level
def test_patient_level_universal(loaded):
    node, corpus, studies = loaded
    res = find(node, "PATIENT", {"PatientID": "", "IssuerOfPatientID": "", "PatientName": ""},
               model="patient")
    assert res.status == SUCCESS, hexs(res.status)
    got = [(d.PatientID, d.get("IssuerOfPatientID", "")) for d in res.identifiers]
    expected = {(s.pid, s.issuer) for s in studies.values()}
    assert len(got) == len(set(got)), f"a patient answered twice: {sorted(got)}"
    assert set(got) == expected


@pytest.mark.parametrize("pattern", ["MIX000002", "MIX*", "MIX00000?", "*0001", "?UP*", "*",
                                     "NOPE*"])
def test_patient_level_patient_id_matching(loaded, pattern):
    node, corpus, studies = loaded
    res = find(node, "PATIENT", {"PatientID": pattern, "IssuerOfPatientID": ""}, model="patient")
    assert res.status == SUCCESS, hexs(res.status)
    got = [(d.PatientID, d.get("IssuerOfPatientID", "")) for d in res.identifiers]
    expected = {(s.pid, s.issuer) for s in studies.values() if wc_match(pattern, s.pid)}
    assert len(got) == len(set(got)), f"a patient answered twice: {sorted(got)}"
    assert set(got) == expected


def test_patient_level_name_wildcards(loaded):
    node, corpus, studies = loaded
    names = sorted({s.name for s in studies.values() if s.name.isascii()})
    family = names[0].split("^")[0]
    for pattern in (f"{family}^*", f"*{family[1:]}*", f"?{family[1:]}^*", names[0]):
        res = find(node, "PATIENT", {"PatientName": pattern, "PatientID": "",
                                     "IssuerOfPatientID": ""}, model="patient")
        assert res.status == SUCCESS, hexs(res.status)
        expected = {(s.pid, s.issuer) for s in studies.values() if wc_match(pattern, s.name)}
        assert {(d.PatientID, d.IssuerOfPatientID) for d in res.identifiers} == expected, pattern


# --------------------------------------------------------------------------- STUDY level
def study_cases(studies: dict[str, Study]):
    """(id, query keys, predicate) for Study Root STUDY level queries, made from the data."""
    ss = sorted(studies.values(), key=lambda s: s.date)
    dates = [s.date for s in ss]
    mid = dates[len(dates) // 2]
    lo, hi = dates[len(dates) // 4], dates[3 * len(dates) // 4]
    named = next(s for s in ss if s.name.isascii() and s.pid.startswith("MIX"))
    fam = named.name.split("^")[0]
    uids = [s.uid for s in ss[1:4]]
    return [
        ("universal", {}, lambda s: True),
        ("patient-id-single", {"PatientID": named.pid}, lambda s: s.pid == named.pid),
        ("patient-id-star", {"PatientID": "MIX*"}, lambda s: s.pid.startswith("MIX")),
        ("patient-id-question", {"PatientID": "MIX00000?"}, lambda s: wc_match("MIX00000?", s.pid)),
        ("name-star", {"PatientName": f"{fam}*"}, lambda s: s.name.startswith(fam)),
        ("name-question", {"PatientName": f"?{fam[1:]}^*"},
         lambda s: wc_match(f"?{fam[1:]}^*", s.name)),
        ("date-single", {"StudyDate": mid}, lambda s: s.date == mid),
        ("date-closed-range", {"StudyDate": f"{lo}-{hi}"}, lambda s: lo <= s.date <= hi),
        ("date-open-start", {"StudyDate": f"-{mid}"}, lambda s: s.date <= mid),
        ("date-open-end", {"StudyDate": f"{mid}-"}, lambda s: s.date >= mid),
        ("time-range", {"StudyTime": "100000-143000"}, lambda s: "100000" <= s.time <= "143000"),
        ("time-open-end", {"StudyTime": "150000-"}, lambda s: s.time >= "150000"),
        ("date-and-patient", {"StudyDate": f"{lo}-", "PatientID": "MIX*"},
         lambda s: s.date >= lo and s.pid.startswith("MIX")),
        ("accession", {"AccessionNumber": ss[2].accession},
         lambda s: s.accession == ss[2].accession),
        ("uid-list", {"StudyInstanceUID": "\\".join(uids)}, lambda s: s.uid in uids),
        ("uid-single", {"StudyInstanceUID": uids[0]}, lambda s: s.uid == uids[0]),
        ("description-star", {"StudyDescription": "*CHEST*"},
         lambda s: "CHEST" in s.description),
        ("modalities-in-study", {"ModalitiesInStudy": "MR"}, lambda s: "MR" in s.modalities),
        ("modalities-in-study-list", {"ModalitiesInStudy": "CT\\CR"},
         lambda s: bool(s.modalities & {"CT", "CR"})),
    ]


CASE_IDS = ["universal", "patient-id-single", "patient-id-star", "patient-id-question",
            "name-star", "name-question", "date-single", "date-closed-range", "date-open-start",
            "date-open-end", "time-range", "time-open-end", "date-and-patient", "accession",
            "uid-list", "uid-single", "description-star", "modalities-in-study",
            "modalities-in-study-list"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_study_level_study_root(loaded, case):
    node, corpus, studies = loaded
    _, keys, pred = next(c for c in study_cases(studies) if c[0] == case)
    expected = {s.uid for s in studies.values() if pred(s)}
    if case != "universal":
        nontrivial(expected, set(studies), case)
    res = find(node, "STUDY", {"StudyInstanceUID": "", **keys})
    assert res.status == SUCCESS, f"{case}: final status {hexs(res.status)}"
    got = res.uids("StudyInstanceUID")
    assert got == expected, (f"{case} {keys}: {len(got)} studies answered, {len(expected)} "
                             f"expected; missing {sorted(expected - got)[:3]}, "
                             f"unexpected {sorted(got - expected)[:3]}")


@pytest.mark.parametrize("case", ["universal", "date-closed-range", "date-open-end",
                                  "uid-single", "modalities-in-study"])
def test_study_level_patient_root(loaded, case):
    """Patient Root at STUDY level: PatientID is given (the unique key above STUDY)."""
    node, corpus, studies = loaded
    _, keys, pred = next(c for c in study_cases(studies) if c[0] == case)
    for pid in sorted({s.pid for s in studies.values() if s.pid.startswith("MIX")}):
        expected = {s.uid for s in studies.values() if s.pid == pid and pred(s)}
        res = find(node, "STUDY", {"PatientID": pid, "StudyInstanceUID": "", **keys},
                   model="patient")
        assert res.status == SUCCESS, hexs(res.status)
        assert res.uids("StudyInstanceUID") == expected, f"{case} for {pid}"


def test_study_return_keys(loaded):
    node, corpus, studies = loaded
    res = find(node, "STUDY", {
        "StudyInstanceUID": "", "PatientID": "", "IssuerOfPatientID": "", "PatientName": "",
        "StudyDate": "", "StudyTime": "", "AccessionNumber": "", "StudyDescription": "",
        "ModalitiesInStudy": "", "NumberOfStudyRelatedSeries": "",
        "NumberOfStudyRelatedInstances": ""})
    assert res.status == SUCCESS, hexs(res.status)
    assert res.uids("StudyInstanceUID") == set(studies)
    problems = []
    for d in res.identifiers:
        s = studies[d.StudyInstanceUID]
        want = {"PatientID": s.pid, "IssuerOfPatientID": s.issuer, "PatientName": s.name,
                "StudyDate": s.date, "StudyTime": s.time, "AccessionNumber": s.accession,
                "StudyDescription": s.description,
                "NumberOfStudyRelatedSeries": len(s.series),
                "NumberOfStudyRelatedInstances": sum(len(v) for v in s.series.values())}
        for k, v in want.items():
            got = d.get(k, None)
            got = int(got) if isinstance(v, int) and got not in (None, "") else (
                str(got) if got is not None else None)
            if got != v:
                problems.append(f"{s.pid}/{k}: {got!r} != {v!r}")
        mods = d.get("ModalitiesInStudy", None)
        mods = set([mods] if isinstance(mods, str) else mods or [])
        if mods != s.modalities:
            problems.append(f"{s.pid}/ModalitiesInStudy: {mods} != {s.modalities}")
    assert not problems, f"{len(problems)} wrong return keys, e.g. {problems[:8]}"


# --------------------------------------------------------------------------- SERIES level
@pytest.mark.parametrize("model", ["study", "patient"])
def test_series_level(loaded, model):
    node, corpus, studies = loaded
    for s in [st for st in studies.values() if len(st.series) > 1][:4]:
        base = {"StudyInstanceUID": s.uid, "SeriesInstanceUID": ""}
        if model == "patient":
            base["PatientID"] = s.pid
        first_uid, first = next(iter(s.series.items()))
        cases = [
            ({}, set(s.series)),
            ({"Modality": first[0].modality}, {u for u, v in s.series.items()
                                               if v[0].modality == first[0].modality}),
            ({"Modality": "XA"}, set()),
            ({"SeriesNumber": "1"}, {u for u, v in s.series.items() if v[0].series_number == 1}),
            ({"SeriesInstanceUID": first_uid}, {first_uid}),
            ({"SeriesInstanceUID": "\\".join(s.series)}, set(s.series)),
        ]
        for keys, expected in cases:
            res = find(node, "SERIES", {**base, **keys}, model=model)
            assert res.status == SUCCESS, f"{keys}: {hexs(res.status)}"
            assert res.uids("SeriesInstanceUID") == expected, f"series query {keys} in {s.uid}"


def test_series_return_keys(loaded):
    node, corpus, studies = loaded
    for s in list(studies.values())[:6]:
        res = find(node, "SERIES", {"StudyInstanceUID": s.uid, "SeriesInstanceUID": "",
                                    "Modality": "", "SeriesNumber": "",
                                    "NumberOfSeriesRelatedInstances": ""})
        assert res.status == SUCCESS, hexs(res.status)
        assert res.uids("SeriesInstanceUID") == set(s.series)
        for d in res.identifiers:
            insts = s.series[d.SeriesInstanceUID]
            assert str(d.get("Modality", "")) == insts[0].modality
            assert int(d.get("SeriesNumber") or -1) == insts[0].series_number
            n = d.get("NumberOfSeriesRelatedInstances", None)
            assert n not in (None, ""), "NumberOfSeriesRelatedInstances not returned"
            assert int(n) == len(insts), f"series {d.SeriesInstanceUID}: {n} != {len(insts)}"


# --------------------------------------------------------------------------- IMAGE level
@pytest.mark.parametrize("model", ["study", "patient"])
def test_image_level(loaded, model):
    node, corpus, studies = loaded
    series = [(s, u, v) for s in studies.values() for u, v in s.series.items() if len(v) >= 2]
    for s, series_uid, insts in series[:5]:
        base = {"StudyInstanceUID": s.uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": ""}
        if model == "patient":
            base["PatientID"] = s.pid
        cases = [
            ({}, {i.sop_uid for i in insts}),
            ({"SOPInstanceUID": insts[0].sop_uid}, {insts[0].sop_uid}),
            ({"SOPInstanceUID": f"{insts[0].sop_uid}\\{insts[-1].sop_uid}"},
             {insts[0].sop_uid, insts[-1].sop_uid}),
            ({"InstanceNumber": "2"}, {i.sop_uid for i in insts if i.instance_number == 2}),
            ({"SOPClassUID": insts[0].sop_class}, {i.sop_uid for i in insts}),
            ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, set()),
        ]
        for keys, expected in cases:
            res = find(node, "IMAGE", {**base, **keys}, model=model)
            assert res.status == SUCCESS, f"{keys}: {hexs(res.status)}"
            assert res.uids("SOPInstanceUID") == expected, f"image query {keys}"


def test_image_level_large_series(loaded, corpora):
    node, corpus, studies = loaded
    big = corpora.big.instances
    res = find(node, "IMAGE", {"StudyInstanceUID": big[0].study_uid,
                               "SeriesInstanceUID": big[0].series_uid, "SOPInstanceUID": "",
                               "InstanceNumber": ""})
    assert res.status == SUCCESS, hexs(res.status)
    assert res.uids("SOPInstanceUID") == {i.sop_uid for i in big}
    assert sorted(int(d.InstanceNumber) for d in res.identifiers) == list(range(1, 501))


# --------------------------------------------------------------------------- character sets
def latin1_study(studies):
    return next(s for s in studies.values() if not s.name.isascii())


def test_latin1_name_returned_with_character_set(loaded):
    node, corpus, studies = loaded
    s = latin1_study(studies)
    res = find(node, "STUDY", {"PatientID": s.pid, "StudyInstanceUID": "", "PatientName": ""})
    assert res.status == SUCCESS, hexs(res.status)
    assert res.identifiers
    for d in res.identifiers:
        cs = d.get("SpecificCharacterSet", None)
        assert cs in ("ISO_IR 100", "ISO_IR 192"), (
            f"response has SpecificCharacterSet {cs!r}: a non-ASCII name needs one")
        assert str(d.PatientName) == s.name


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_latin1_name_matching(loaded, charset):
    node, corpus, studies = loaded
    s = latin1_study(studies)
    fam = s.name.split("^")[0]
    k = next(n for n, ch in enumerate(fam) if not ch.isascii())
    patterns = [s.name, f"{fam}*", fam[:k] + "?" + fam[k + 1:] + "*", f"*{fam[k:]}*"]
    for pattern in patterns:
        expected = {st.uid for st in studies.values() if wc_match(pattern, st.name)}
        res = find(node, "STUDY", {"PatientName": pattern, "StudyInstanceUID": ""},
                   charset=charset)
        assert res.status == SUCCESS, f"{pattern!r} in {charset}: {hexs(res.status)}"
        assert res.uids("StudyInstanceUID") == expected, f"{pattern!r} in {charset}"


# --------------------------------------------------------------------------- issuers
def test_patient_id_without_issuer_gives_each_issuers_patient(loaded):
    node, corpus, studies = loaded
    dup = {s.issuer: s.name for s in studies.values() if s.pid == "DUP000001"}
    assert set(dup) == {"HOSP_A", "HOSP_B"}
    res = find(node, "PATIENT", {"PatientID": "DUP000001", "IssuerOfPatientID": "",
                                 "PatientName": ""}, model="patient")
    assert res.status == SUCCESS, hexs(res.status)
    got = sorted((str(d.IssuerOfPatientID), str(d.PatientName)) for d in res.identifiers)
    assert got == sorted(dup.items()), "two people with one PatientID must stay two"


@pytest.mark.parametrize("issuer", ["HOSP_A", "HOSP_B"])
def test_patient_id_with_issuer_matches_that_issuer_only(loaded, issuer):
    node, corpus, studies = loaded
    res = find(node, "PATIENT", {"PatientID": "DUP000001", "IssuerOfPatientID": issuer,
                                 "PatientName": ""}, model="patient")
    assert res.status == SUCCESS, hexs(res.status)
    assert [str(d.IssuerOfPatientID) for d in res.identifiers] == [issuer]
    expected = {s.uid for s in studies.values() if s.pid == "DUP000001" and s.issuer == issuer}
    res = find(node, "STUDY", {"PatientID": "DUP000001", "IssuerOfPatientID": issuer,
                               "StudyInstanceUID": ""})
    assert res.status == SUCCESS, hexs(res.status)
    assert res.uids("StudyInstanceUID") == expected


def test_study_query_by_patient_id_spans_issuers(loaded):
    node, corpus, studies = loaded
    expected = {s.uid: s.issuer for s in studies.values() if s.pid == "DUP000001"}
    res = find(node, "STUDY", {"PatientID": "DUP000001", "IssuerOfPatientID": "",
                               "StudyInstanceUID": ""})
    assert res.status == SUCCESS, hexs(res.status)
    assert {d.StudyInstanceUID: str(d.IssuerOfPatientID) for d in res.identifiers} == expected


def test_default_issuer_recorded_when_sender_gives_none(loaded):
    node, corpus, studies = loaded
    res = find(node, "PATIENT", {"PatientID": "NOISS000001", "IssuerOfPatientID": ""},
               model="patient")
    assert res.status == SUCCESS, hexs(res.status)
    assert [str(d.IssuerOfPatientID) for d in res.identifiers] == [DEFAULT_ISSUER]


# --------------------------------------------------------------------------- C-CANCEL
def test_c_cancel_stops_a_long_find(loaded, corpora):
    """C-CANCEL sent right after the C-FIND request of a 500-match query: the node answers
    Cancel (0xFE00) before it has sent every match, and the association stays usable."""
    node, corpus, studies = loaded
    big = corpora.big.instances
    model = MODELS["study"][0]
    ident = query_dataset("IMAGE", {"StudyInstanceUID": big[0].study_uid,
                                    "SeriesInstanceUID": big[0].series_uid,
                                    "SOPInstanceUID": "", "InstanceNumber": ""})
    with association(node, [build_context(model)]) as assoc:
        responses = assoc.send_c_find(ident, model, msg_id=11)
        assoc.send_c_cancel(11, query_model=model)
        statuses = [status_of(st) for st, _ in responses]
        pending = sum(1 for s in statuses if s in PENDING)
        assert statuses and statuses[-1] == CANCEL, (
            f"final status {hexs(statuses[-1] if statuses else None)} after {pending} matches")
        assert pending < len(big)
        # the association is still good for another query
        again = [status_of(st) for st, _ in assoc.send_c_find(ident, model, msg_id=12)]
        assert again[-1] == SUCCESS and sum(1 for s in again if s in PENDING) == len(big)
