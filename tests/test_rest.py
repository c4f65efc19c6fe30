"""The REST API (/api/v1) with `requests`: status, patients / studies / series / instances,
paging, deletion with tombstones (checked through C-FIND, C-GET, the feed and `pacsgrid check`),
the change feed, the quarantine, problem+json errors, and the OpenAPI document (validated with
openapi-spec-validator, then fuzzed with schemathesis)."""
from __future__ import annotations

import datetime
import http
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pydicom
import pytest
import requests

from harness import (DEFAULT_ISSUER, HOST, REPO, SUCCESS, assert_identical, c_get, dcmtk,
                     meta_end, rewrite, run_pacsgrid, store, store_ok)

API = "/api/v1"
SITE = "site-a"  # the harness' default site name
HEX64 = re.compile(r"^[0-9a-f]{64}$")
PROBLEM = "application/problem+json"


# ----------------------------------------------------------------------------------- helpers
def url(node, path: str) -> str:
    return f"http://{HOST}:{node.http_port}{API}{path}"


def get(node, path: str, **params) -> dict:
    r = requests.get(url(node, path), params=params, timeout=30)
    assert r.status_code == 200, f"GET {path} {params}: {r.status_code} {r.text[:2000]}"
    assert r.headers["content-type"] == "application/json", r.headers
    return r.json()


def delete(node, path: str) -> dict:
    r = requests.delete(url(node, path), timeout=120)
    assert r.status_code == 200, f"DELETE {path}: {r.status_code} {r.text[:2000]}"
    return r.json()


def assert_problem(r: requests.Response, status: int, detail_has: str) -> None:
    assert r.status_code == status, f"{r.request.method} {r.url}: {r.status_code} {r.text[:500]}"
    assert r.headers["content-type"] == PROBLEM, r.headers
    body = r.json()
    assert body["status"] == status and body["type"] == "about:blank", body
    assert body["title"] == http.HTTPStatus(status).phrase, body
    assert detail_has in body["detail"], f"{body['detail']!r} lacks {detail_has!r}"


def issuer_of(i) -> str:
    return i.issuer or DEFAULT_ISSUER


def patient_key(i) -> tuple[str, str]:
    return (i.patient_id, issuer_of(i))


def patient_url(issuer: str, pid: str) -> str:
    return f"{API}/patients/{quote(issuer, safe='')}/{quote(pid, safe='')}"


def import_corpus(node, corpus) -> None:
    # The node's own site and default issuer, as `serve` would record them.
    r = run_pacsgrid(["import", "--data", node.data_dir, "--site", SITE,
                      "--default-issuer", DEFAULT_ISSUER, *corpus.top_dirs()])
    assert r.returncode == 0, f"import failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def all_pages(node, path: str, limit: int, **params) -> list[dict]:
    """Walk a list with limit/offset until next_offset is null; checks the paging fields."""
    items, offset = [], 0
    while True:
        page = get(node, path, limit=limit, offset=offset, **params)
        assert page["limit"] == limit and page["offset"] == offset, page
        assert len(page["items"]) <= limit
        items += page["items"]
        if page["next_offset"] is None:
            return items
        assert len(page["items"]) == limit and page["next_offset"] == offset + limit, page
        offset = page["next_offset"]


def feed(node, since: int = 0, limit: int = 10000) -> list[dict]:
    out = []
    while True:
        page = get(node, "/changes", since=since, limit=limit)
        out += page["items"]
        since = page["next_since"]
        if not page["more"]:
            return out


def findscu_uids(node, level: str, keys: dict, tmp: Path, want: str) -> set[str]:
    """dcmtk findscu (Study Root); the `want` attribute of every response."""
    tmp.mkdir(parents=True, exist_ok=True)
    args = ["-S", "-aet", "FINDSCU", "-aec", node.ae_title, "-X", "-od", tmp,
            "-k", f"QueryRetrieveLevel={level}", "-k", f"{want}="]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}"]
    r = dcmtk("findscu", *args, HOST, node.dicom_port, timeout=60)
    assert r.returncode == 0, f"findscu exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    out = set()
    for p in sorted(tmp.glob("rsp*.dcm")):
        out.add(str(pydicom.dcmread(p).get(want, "")))
        p.unlink()
    return out


def stop_and_check(node) -> dict:
    node.stop()
    r = run_pacsgrid(["check", "--data", node.data_dir])
    out = r.stdout
    js = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert r.returncode == 0, f"`pacsgrid check` failed after deletion: {js}\n{r.stderr[-2000:]}"
    assert js["orphan_blobs"] == 0 and js["missing_blobs"] == 0, js
    return js


def cargo_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    m = re.search(r'\[workspace\.package\][^\[]*?version\s*=\s*"([^"]+)"', text, re.S)
    assert m, "no workspace version in Cargo.toml"
    return m.group(1)


def parse_rfc3339(s: str) -> datetime.datetime:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s), s
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


# ----------------------------------------------------------------------------------- fixture
@pytest.fixture(scope="module")
def loaded(module_node_factory, corpora):
    """A node holding the mixed corpus, imported as the files' exact bytes (so sizes compare)."""
    corpus = corpora.mixed
    node = module_node_factory(start=False)
    import_corpus(node, corpus)
    node.start()
    return node, corpus


# ----------------------------------------------------------------------------------- status
def test_status_counts_equal_the_corpus(loaded):
    node, corpus = loaded
    st = get(node, "/status")
    assert st["site"] == SITE
    assert st["version"] == cargo_version()
    assert st["counts"] == {
        "patients": len({patient_key(i) for i in corpus.instances}),
        "studies": len(corpus.studies()),
        "series": len(corpus.series()),
        "instances": len(corpus),
        "quarantined": 0,
    }
    assert st["storage"]["stored_bytes"] == sum(i.path.stat().st_size for i in corpus.instances)
    disk = os.statvfs(node.data_dir)
    assert st["storage"]["disk_total_bytes"] == disk.f_blocks * disk.f_frsize
    # other processes write meanwhile: the free figure is only close to what statvfs says now
    assert 0 < st["storage"]["disk_available_bytes"] <= st["storage"]["disk_total_bytes"]
    assert abs(st["storage"]["disk_available_bytes"] - disk.f_bavail * disk.f_frsize) < 1 << 30
    assert st["change_feed"]["head"] == len(corpus)


# ----------------------------------------------------------------------------------- listing
def test_patients_list_exactly(loaded):
    node, corpus = loaded
    got = all_pages(node, "/patients", limit=1000)
    expected = {}
    for i in corpus.instances:
        e = expected.setdefault(patient_key(i), {"name": i.patient_name, "studies": set(),
                                                 "series": set(), "instances": 0})
        e["studies"].add(i.study_uid)
        e["series"].add(i.series_uid)
        e["instances"] += 1
    assert len(got) == len(expected)
    for p in got:
        e = expected[(p["patient_id"], p["issuer"])]
        assert p["name"] == e["name"]
        assert (p["number_of_studies"], p["number_of_series"], p["number_of_instances"]) == (
            len(e["studies"]), len(e["series"]), e["instances"])
        assert p["url"] == patient_url(p["issuer"], p["patient_id"])
    # One patient by its URL: the same fields and exactly their studies.
    for (pid, issuer), e in expected.items():
        r = requests.get(f"http://{HOST}:{node.http_port}{patient_url(issuer, pid)}", timeout=30)
        assert r.status_code == 200, r.text
        one = r.json()
        assert (one["patient_id"], one["issuer"], one["name"]) == (pid, issuer, e["name"])
        assert {s["study_uid"] for s in one["studies"]} == e["studies"]
    # Exact filters.
    pid, issuer = next(iter(expected))
    only = get(node, "/patients", patient_id=pid)["items"]
    assert {(p["patient_id"], p["issuer"]) for p in only} == {(pid, issuer)}
    assert get(node, "/patients", patient_id=pid, issuer="NO-SUCH-ISSUER")["items"] == []


def test_studies_list_with_paging_and_exact_values(loaded):
    node, corpus = loaded
    studies = corpus.studies()
    for limit in (1, 3, 1000):
        got = all_pages(node, "/studies", limit=limit)
        uids = [s["study_uid"] for s in got]
        assert len(uids) == len(set(uids)) == len(studies), f"limit {limit}: {uids}"
        assert set(uids) == set(studies)
    for s in got:
        insts = studies[s["study_uid"]]
        i = insts[0]
        assert (s["date"], s["time"], s["accession_number"], s["description"]) == (
            i.study_date, i.study_time, i.accession, i.study_description)
        assert s["modalities"] == sorted({x.modality for x in insts})
        assert s["sop_classes"] == sorted({x.sop_class for x in insts})
        assert s["number_of_series"] == len({x.series_uid for x in insts})
        assert s["number_of_instances"] == len(insts)
        assert (s["patient"]["patient_id"], s["patient"]["issuer"]) == patient_key(i)
        assert s["patient"]["name"] == i.patient_name
        assert s["url"] == f"{API}/studies/{s['study_uid']}"
    # Filtered by patient: exactly that patient's studies.
    i = corpus.instances[0]
    mine = all_pages(node, "/studies", limit=1, patient_id=i.patient_id, issuer=issuer_of(i))
    assert {s["study_uid"] for s in mine} == {x.study_uid for x in corpus.instances
                                               if patient_key(x) == patient_key(i)}
    # An offset past the end is an empty last page.
    page = get(node, "/studies", offset=len(studies) + 5)
    assert page["items"] == [] and page["next_offset"] is None


def test_study_series_and_instance_resources(loaded):
    node, corpus = loaded
    by_series = corpus.series()
    feed_hash = {c["sop_instance_uid"]: c["hash"] for c in feed(node) if c["kind"] == "stored"}
    for study_uid, insts in corpus.studies().items():
        st = get(node, f"/studies/{study_uid}")
        assert st["study_uid"] == study_uid
        series = st["series"]
        assert {s["series_uid"] for s in series} == {i.series_uid for i in insts}
        numbers = [s["number"] for s in series]
        assert numbers == sorted(numbers), f"series not by SeriesNumber: {numbers}"
        for s in series:
            members = by_series[s["series_uid"]]
            assert s["study_uid"] == study_uid
            assert s["modality"] == members[0].modality
            assert s["number"] == members[0].series_number
            assert s["number_of_instances"] == len(members)
            one = get(node, f"/series/{s['series_uid']}")
            assert one["series_uid"] == s["series_uid"]
            assert (one["patient"]["patient_id"], one["patient"]["issuer"]) == patient_key(
                members[0])
            listed = one["instances"]
            assert [x["number"] for x in listed] == sorted(i.instance_number for i in members)
            assert {x["sop_instance_uid"] for x in listed} == {i.sop_uid for i in members}
            for x in listed:
                f = corpus.by_uid[x["sop_instance_uid"]]
                assert (x["sop_class_uid"], x["transfer_syntax"], x["size"]) == (
                    f.sop_class, f.ts, f.path.stat().st_size)
                assert x["hash"] == feed_hash[f.sop_uid] and HEX64.match(x["hash"])
                assert x["url"] == f"{API}/instances/{f.sop_uid}"
    # Every instance in full.
    for f in corpus.instances:
        x = get(node, f"/instances/{f.sop_uid}")
        assert (x["sop_instance_uid"], x["series_uid"], x["study_uid"]) == (
            f.sop_uid, f.series_uid, f.study_uid)
        assert (x["transfer_syntax"], x["size"], x["number"]) == (
            f.ts, f.path.stat().st_size, f.instance_number)
        assert x["hash"] == feed_hash[f.sop_uid]
        assert (x["origin_site"], x["source"], x["holders"]) == (SITE, "import", [SITE])
        assert x["dataset_offset"] == meta_end(f.path.read_bytes())
        received = parse_rfc3339(x["received_at"])
        assert int(received.timestamp() * 1000) == x["received_at_ms"]
        a = x["attributes"]
        assert (a["PatientID"], a["IssuerOfPatientID"], a["StudyInstanceUID"],
                a["SeriesInstanceUID"], a["SOPInstanceUID"], a["Modality"]) == (
            f.patient_id, issuer_of(f), f.study_uid, f.series_uid, f.sop_uid, f.modality)
        assert a.get("PatientName", "") == f.patient_name


# ----------------------------------------------------------------------------------- feed
def test_change_feed_pages_with_a_cursor(loaded):
    node, corpus = loaded
    whole = get(node, "/changes")
    assert whole["more"] is False and len(whole["items"]) == len(corpus)
    seqs = [c["seq"] for c in whole["items"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert whole["next_since"] == seqs[-1]
    assert {c["sop_instance_uid"] for c in whole["items"]} == set(corpus.by_uid)
    for c in whole["items"]:
        f = corpus.by_uid[c["sop_instance_uid"]]
        assert (c["kind"], c["study_uid"], c["series_uid"]) == ("stored", f.study_uid,
                                                                f.series_uid)
        assert HEX64.match(c["hash"])
        assert int(parse_rfc3339(c["at"]).timestamp() * 1000) == c["at_ms"]
    # Paged with a cursor: every entry exactly once, in order.
    paged, since = [], 0
    while True:
        page = get(node, "/changes", since=since, limit=5)
        assert len(page["items"]) <= 5
        paged += page["items"]
        since = page["next_since"]
        if not page["more"]:
            break
    assert paged == whole["items"]
    tail = get(node, "/changes", since=seqs[-1] + 100)
    assert tail == {"items": [], "next_since": seqs[-1] + 100, "more": False}


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("method,path,params,status,detail", [
    ("GET", "/studies/1.2.3.404", {}, 404, "no study 1.2.3.404"),
    ("GET", "/series/1.2.3.404", {}, 404, "no series 1.2.3.404"),
    ("GET", "/instances/1.2.3.404", {}, 404, "no instance 1.2.3.404"),
    ("GET", "/patients/NOBODY/x", {}, 404, 'no patient with PatientID "x" under issuer "NOBODY"'),
    ("DELETE", "/studies/1.2.3.404", {}, 404, "no study 1.2.3.404"),
    ("DELETE", "/series/1.2.3.404", {}, 404, "no series 1.2.3.404"),
    ("DELETE", "/instances/1.2.3.404", {}, 404, "no instance 1.2.3.404"),
    ("DELETE", "/patients/NOBODY/x", {}, 404, "no patient"),
    ("GET", "/studies/1.2.abc", {}, 400, "not a valid UID"),
    ("GET", "/series/01.2", {}, 400, "not a valid UID"),
    ("GET", "/instances/1..2", {}, 400, "not a valid UID"),
    ("DELETE", "/studies/" + "1" * 65, {}, 400, "not a valid UID"),
    ("GET", "/studies", {"limit": "0"}, 400, "limit must be between 1 and 1000"),
    ("GET", "/studies", {"limit": "1001"}, 400, "limit must be between 1 and 1000"),
    ("GET", "/patients", {"limit": "ten"}, 400, "limit must be an integer"),
    ("GET", "/patients", {"offset": "-1"}, 400, "offset must be between"),
    ("GET", "/studies", {"patient_id": "MIX*"}, 400, "matched exactly"),
    ("GET", "/studies", {"sort": "date"}, 400, 'unknown query parameter "sort"'),
    ("GET", "/changes", {"since": "-5"}, 400, "since must be between 0 and"),
    ("GET", "/changes", {"limit": "10001"}, 400, "limit must be between 1 and 10000"),
    ("GET", "/quarantine", {"limit": "0"}, 400, "limit must be between 1 and 1000"),
    ("GET", "/no-such-resource", {}, 404, "no REST resource at /api/v1/no-such-resource"),
    ("POST", "/studies", {}, 405, "POST is not allowed on /api/v1/studies"),
    ("PUT", "/status", {}, 405, "PUT is not allowed"),
])
def test_errors_are_problem_json(loaded, method, path, params, status, detail):
    node, _ = loaded
    r = requests.request(method, url(node, path), params=params, timeout=30)
    assert_problem(r, status, detail)


def test_errors_change_nothing(loaded):
    node, corpus = loaded
    def status():
        s = get(node, "/status")
        # the free disk space is the machine's, moved by any other process
        s["storage"].pop("disk_available_bytes", None)
        return s

    before = status()
    requests.delete(url(node, "/studies/1.2.3.404"), timeout=30)
    requests.delete(url(node, "/studies/not-a-uid"), timeout=30)
    assert status() == before


# ----------------------------------------------------------------------------------- deletion
def test_delete_study_everywhere_then_store_it_again(node_factory, corpora, tmp_path):
    corpus = corpora.mixed
    node = node_factory(start=False)
    import_corpus(node, corpus)
    node.start()
    studies = corpus.studies()
    # A study whose patient has another study, so the patient stays.
    study_uid = next(u for u, insts in studies.items()
                     if len({x.study_uid for x in corpus.instances
                             if patient_key(x) == patient_key(insts[0])}) > 1)
    gone = studies[study_uid]
    before = get(node, "/status")
    head = before["change_feed"]["head"]
    hashes = {x["sop_instance_uid"]: x["hash"] for x in
              (get(node, f"/instances/{i.sop_uid}") for i in gone)}
    assert findscu_uids(node, "STUDY", {"StudyInstanceUID": study_uid}, tmp_path / "f1",
                        "StudyInstanceUID") == {study_uid}

    d = delete(node, f"/studies/{study_uid}")
    assert d == {
        "patients": 0, "studies": 1, "series": len({i.series_uid for i in gone}),
        "instances": len(gone), "bytes": sum(i.path.stat().st_size for i in gone),
        "blobs_removed": len(gone),
        "tombstones": {"count": len(gone), "first_seq": head + 1, "last_seq": head + len(gone)},
    }
    # Gone from REST...
    r = requests.get(url(node, f"/studies/{study_uid}"), timeout=30)
    assert_problem(r, 404, f"no study {study_uid}")
    for i in gone:
        assert_problem(requests.get(url(node, f"/instances/{i.sop_uid}"), timeout=30), 404,
                       "no instance")
    assert study_uid not in {s["study_uid"] for s in all_pages(node, "/studies", limit=1000)}
    assert_problem(requests.delete(url(node, f"/studies/{study_uid}"), timeout=30), 404,
                   f"no study {study_uid}")
    after = get(node, "/status")
    assert after["counts"] == {**before["counts"], "studies": before["counts"]["studies"] - 1,
                               "series": before["counts"]["series"] - d["series"],
                               "instances": before["counts"]["instances"] - len(gone)}
    assert after["storage"]["stored_bytes"] == before["storage"]["stored_bytes"] - d["bytes"]
    # ...from C-FIND (dcmtk findscu) at study and image level...
    assert findscu_uids(node, "STUDY", {"StudyInstanceUID": study_uid}, tmp_path / "f2",
                        "StudyInstanceUID") == set()
    everything = findscu_uids(node, "STUDY", {}, tmp_path / "f3", "StudyInstanceUID")
    assert everything == set(studies) - {study_uid}
    assert findscu_uids(node, "IMAGE", {"StudyInstanceUID": study_uid}, tmp_path / "f4",
                        "SOPInstanceUID") == set()
    # ...and from C-GET, while the other studies still come back whole.
    got = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
    assert got.received == {}, f"C-GET of a deleted study sent {len(got.received)} instances"
    other_uid = next(u for u in studies if u != study_uid)
    got = c_get(node, "STUDY", {"StudyInstanceUID": other_uid})
    assert got.status == SUCCESS
    assert_identical({i.sop_uid: i.data for i in studies[other_uid]}, got.received, "other study")
    # The feed: the stored entries, then exactly one tombstone per instance.
    entries = feed(node)
    assert [c["kind"] for c in entries] == ["stored"] * len(corpus) + ["deleted"] * len(gone)
    tombs = entries[len(corpus):]
    assert [c["seq"] for c in tombs] == list(range(head + 1, head + len(gone) + 1))
    assert {c["sop_instance_uid"]: c["hash"] for c in tombs} == hashes
    assert all(c["study_uid"] == study_uid for c in tombs)
    assert {(c["sop_instance_uid"], c["series_uid"]) for c in tombs} == {
        (i.sop_uid, i.series_uid) for i in gone}

    # The index and the blob store still agree.
    js = stop_and_check(node)
    assert js["instances"] == len(corpus) - len(gone)
    node.start()

    # Stored again (C-STORE this time): a new instance, found and retrieved like before.
    store_ok(node, gone)
    st = get(node, f"/studies/{study_uid}")
    assert st["number_of_instances"] == len(gone)
    assert get(node, "/status")["counts"] == before["counts"]
    got = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
    assert got.status == SUCCESS
    assert_identical({i.sop_uid: i.data for i in gone}, got.received, "study stored again")
    entries = feed(node)
    assert [c["kind"] for c in entries[len(corpus) + len(gone):]] == ["stored"] * len(gone)
    stop_and_check(node)


def test_delete_series_instance_and_patient(node_factory, corpora):
    corpus = corpora.mixed
    node = node_factory(start=False)
    import_corpus(node, corpus)
    node.start()
    by_series = corpus.series()
    # A series of a study with other series: the study stays, one series fewer.
    series_uid = next(u for u, m in by_series.items()
                      if len({x.series_uid for x in corpus.studies()[m[0].study_uid]}) > 1)
    members = by_series[series_uid]
    study_uid = members[0].study_uid
    st = get(node, f"/studies/{study_uid}")
    d = delete(node, f"/series/{series_uid}")
    assert (d["patients"], d["studies"], d["series"], d["instances"]) == (0, 0, 1, len(members))
    after = get(node, f"/studies/{study_uid}")
    assert after["number_of_series"] == st["number_of_series"] - 1
    assert after["number_of_instances"] == st["number_of_instances"] - len(members)
    assert series_uid not in {s["series_uid"] for s in after["series"]}
    assert_problem(requests.get(url(node, f"/series/{series_uid}"), timeout=30), 404,
                   "no series")

    # One instance of a series with several: only it goes.
    series_uid, members = next((u, m) for u, m in by_series.items()
                               if len(m) > 1 and m[0].study_uid != study_uid)
    victim = members[0]
    d = delete(node, f"/instances/{victim.sop_uid}")
    assert (d["patients"], d["studies"], d["series"], d["instances"], d["blobs_removed"]) == (
        0, 0, 0, 1, 1)
    s = get(node, f"/series/{series_uid}")
    assert {x["sop_instance_uid"] for x in s["instances"]} == {
        i.sop_uid for i in members} - {victim.sop_uid}
    assert_problem(requests.delete(url(node, f"/instances/{victim.sop_uid}"), timeout=30), 404,
                   "no instance")

    # A whole patient: every study, and the patient, go.
    key = patient_key(corpus.instances[-1])
    purl = patient_url(key[1], key[0])
    r = requests.get(f"http://{HOST}:{node.http_port}{purl}", timeout=30)
    assert r.status_code == 200, r.text
    held = r.json()
    r = requests.delete(f"http://{HOST}:{node.http_port}{purl}", timeout=60)
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["patients"], d["studies"], d["series"], d["instances"]) == (
        1, held["number_of_studies"], held["number_of_series"], held["number_of_instances"])
    r = requests.get(f"http://{HOST}:{node.http_port}{purl}", timeout=30)
    assert_problem(r, 404, "no patient")
    assert key not in {(p["patient_id"], p["issuer"])
                       for p in all_pages(node, "/patients", limit=1000)}
    st = get(node, "/status")
    assert st["counts"]["patients"] == len({patient_key(i) for i in corpus.instances}) - 1
    tombs = [c for c in feed(node) if c["kind"] == "deleted"]
    assert len(tombs) == len({c["sop_instance_uid"] for c in tombs}) == (
        len(corpus) - st["counts"]["instances"])
    stop_and_check(node)


# ----------------------------------------------------------------------------------- quarantine
def test_quarantine_lists_a_conflicting_object(node, corpora, tmp_path):
    inst = corpora.native.instances[0]
    store_ok(node, [inst])
    assert get(node, "/quarantine") == {"items": []}
    other = rewrite(inst.path, tmp_path / "other.dcm", PatientName="OTHER^OBJECT")
    res = store(node, [other])
    assert list(res.values()) != [None]
    q = get(node, "/quarantine")["items"]
    assert len(q) == 1
    e = q[0]
    kept = get(node, f"/instances/{inst.sop_uid}")
    assert (e["sop_instance_uid"], e["kept_hash"], e["source"]) == (inst.sop_uid, kept["hash"],
                                                                    "PYTEST")
    assert HEX64.match(e["quarantined_hash"]) and e["quarantined_hash"] != e["kept_hash"]
    assert e["reason"]
    parse_rfc3339(e["at"])
    assert get(node, "/status")["counts"]["quarantined"] == 1
    kinds = [c["kind"] for c in feed(node)]
    assert kinds == ["stored", "quarantined"]
    assert get(node, "/quarantine", limit=1)["items"] == q


# ----------------------------------------------------------------------------------- OpenAPI
def test_openapi_document_is_valid(loaded):
    from openapi_spec_validator import validate
    node, _ = loaded
    doc = get(node, "/openapi.json")
    validate(doc)
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/status", "/patients", "/patients/{issuer}/{patient_id}", "/studies",
        "/studies/{study_uid}", "/series/{series_uid}", "/instances/{sop_instance_uid}",
        "/changes", "/quarantine", "/openapi.json", "/grid", "/grid/scrub", "/prefetch", "/audit"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            for code, rsp in op["responses"].items():
                rsp = doc["components"]["responses"][rsp["$ref"].rsplit("/", 1)[1]] \
                    if "$ref" in rsp else rsp
                media = "application/json" if code.startswith("2") else PROBLEM
                assert media in rsp["content"], f"{method} {path} {code}"


def test_schemathesis_finds_no_server_error_or_schema_violation(node_factory, corpora, tmp_path):
    """Fuzzes every operation, DELETE included, on a node of its own holding a small corpus."""
    node = node_factory(start=False)
    import_corpus(node, corpora.native)
    node.start()
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [str(exe) if exe.exists() else "schemathesis", "run",
           f"http://{HOST}:{node.http_port}{API}/openapi.json",
           "--checks", "not_a_server_error,response_schema_conformance,"
                       "status_code_conformance,content_type_conformance",
           "--max-examples", "15", "--seed", "20240601", "--workers", "1",
           "--phases", "examples,coverage,fuzzing,stateful", "--request-timeout", "30",
           "--no-color", "--report", "junit", "--report-dir", str(tmp_path / "report")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    print(r.stdout[-4000:])  # the summary, shown with -s
    assert r.returncode == 0, f"schemathesis failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert "No issues found" in r.stdout or "passed" in r.stdout, r.stdout[-3000:]
    # The node survived it and still answers.
    assert get(node, "/status")["site"] == SITE
