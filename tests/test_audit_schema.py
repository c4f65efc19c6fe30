"""Audit messages against the DICOM PS3.15 A.5.1 schema, and `pacsgrid audit verify|search` on a
real log.

The samples in data/audit-samples/ (one message of every event kind, and audit.log holding
them all) are written by the pacsgrid-audit crate's `write_samples_of_every_kind` unit test;
`cargo test -p pacsgrid-audit` regenerates them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lxml import etree

from harness import run_pacsgrid

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "crates" / "pacsgrid-audit" / "schema" / "audit-message.rng"
SAMPLES = Path(__file__).resolve().parent / "data" / "audit-samples"
EVENTS = {"application-start", "application-stop", "instances-stored", "query",
          "instances-transferred", "instances-accessed", "export", "import", "study-deleted",
          "login", "logout", "security-alert", "configuration-change", "audit-log-used"}
FIELDS = {"seq", "time", "event", "outcome", "user", "patient_id", "study_uids", "prev", "hash"}


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def assert_valid(schema: etree.RelaxNG, xml: bytes, what: str) -> None:
    doc = etree.fromstring(xml)  # raises on XML that is not well-formed
    assert schema.validate(doc), f"{what}: {schema.error_log}"


def test_every_event_kind_has_a_valid_message(schema):
    files = sorted(SAMPLES.glob("*.xml"))
    kinds = {f.stem.split("-", 1)[1] for f in files}
    assert kinds == EVENTS, f"missing samples: {EVENTS - kinds}"
    for f in files:
        assert_valid(schema, f.read_bytes(), f.name)


def test_the_schema_refuses_what_ps315_forbids(schema):
    good = (SAMPLES / "02-instances-stored.xml").read_bytes()
    moved = etree.fromstring(good)  # AuditSourceIdentification must follow the participants
    source = moved.find("AuditSourceIdentification")
    moved.remove(source)
    moved.insert(1, source)
    for broken in (
        good.replace(b'EventOutcomeIndicator="0"', b'EventOutcomeIndicator="3"'),
        good.replace(b'UserIsRequestor="true"', b'UserIsRequestor="yes"'),
        good.replace(b"<EventID ", b"<EventId "),
        etree.tostring(moved),
    ):
        assert broken != good
        assert not schema.validate(etree.fromstring(broken))


def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "audit").mkdir()
    shutil.copy(SAMPLES / "audit.log", tmp_path / "audit" / "audit.log")
    return tmp_path


def search(data: Path, *args: str) -> list[dict]:
    r = run_pacsgrid(["audit", "search", "--data", data, "--json", *args], timeout=60)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_search_prints_records_whose_xml_is_valid(tmp_path, schema):
    data = data_dir(tmp_path)
    records = search(data, "--xml")
    assert [r["seq"] for r in records] == list(range(1, 17))
    assert {r["event"] for r in records} == EVENTS
    for r in records:
        assert FIELDS <= r.keys(), r.keys()
        assert r["outcome"] in (0, 4, 8, 12)
        assert_valid(schema, r["xml"].encode(), f"record {r['seq']}")
    assert "xml" not in search(data)[0]


def test_search_filters(tmp_path):
    data = data_dir(tmp_path)
    study = "1.2.826.0.1.3680043.8.498.1"
    by_patient = search(data, "--patient", "PAT-1")
    assert [r["seq"] for r in by_patient] == [2, 3, 4, 5, 6, 8]
    assert all(r["patient_id"] == "PAT-1" for r in by_patient)
    assert [r["seq"] for r in search(data, "--study", study, "--user", "alice")] == [5, 6, 8]
    assert [r["seq"] for r in search(data, "--since", "2025-03-01T08:12:00Z")] == [13, 14, 15, 16]
    assert search(data, "--since", "2025-03-02") == []
    assert [r["event"] for r in search(data, "--event", "login")] == ["login", "login"]
    failed = search(data, "--event", "login", "--user", "mallory")
    assert [r["outcome"] for r in failed] == [4]
    r = run_pacsgrid(["audit", "search", "--data", data, "--patient", "PAT-1"])
    assert r.returncode == 0 and "study-deleted" in r.stdout  # the table form
    r = run_pacsgrid(["audit", "search", "--data", data, "--since", "last tuesday"])
    assert r.returncode != 0 and "since" in r.stderr


def verify(data: Path) -> tuple[int, str]:
    r = run_pacsgrid(["audit", "verify", "--data", data], timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_verify_passes_an_intact_log(tmp_path):
    code, out = verify(data_dir(tmp_path))
    assert code == 0, out
    assert "16 records" in out


def test_verify_names_the_record_with_an_edited_byte(tmp_path):
    data = data_dir(tmp_path)
    log = data / "audit" / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    line = bytearray(lines[6])
    i = line.index(b'"user":"') + len(b'"user":"')
    line[i] ^= 0x01  # one byte of record 7's user
    lines[6] = bytes(line)
    log.write_bytes(b"".join(lines))
    code, out = verify(data)
    assert code != 0, out
    assert "line 7 (seq 7)" in out, out


def test_verify_names_a_deleted_line(tmp_path):
    data = data_dir(tmp_path)
    log = data / "audit" / "audit.log"
    lines = log.read_bytes().splitlines(keepends=True)
    del lines[2]
    log.write_bytes(b"".join(lines))
    code, out = verify(data)
    assert code != 0, out
    assert "line 3 (seq 4)" in out, out


def test_verify_without_a_log_fails(tmp_path):
    code, out = verify(tmp_path)
    assert code != 0 and "no audit log" in out
