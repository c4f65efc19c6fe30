"""Who may do what on DIMSE, and the audit trail it leaves (issue 5): AE rules admit calling AEs
by title and host (A-ASSOCIATE-RJ otherwise), rights refuse operations with status 0124H, every
refusal and every access is audited, and a scripted session leaves exactly one well-formed
record per access (per study where PS3.15 asks for one patient per message)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from harness import (DEFAULT_ISSUER, HOST, SUCCESS, RemoteAE, StoreSCP, c_get, c_move, dcmtk, echo,
                     find, hexs, make_ae, run_pacsgrid, status_of, store, store_contexts, wait_for)

SCHEMA = Path(__file__).resolve().parent.parent / "crates" / "pacsgrid-audit" / "schema" / \
    "audit-message.rng"
NOT_AUTHORIZED = 0x0124

RULES = """
[[access.ae]]
title = "CT1"
may = ["store"]

[[access.ae]]
title = "WS"
hosts = ["127.0.0.1"]
may = ["find", "retrieve"]
move_destinations = ["STORESCP"]

[[access.ae]]
title = "FAR"
hosts = ["192.0.2.7"]
may = ["store", "find", "retrieve"]
"""


def audit(node, *args) -> list[dict]:
    r = run_pacsgrid(["audit", "search", "--data", str(node.data_dir), "--json", *args],
                     timeout=60)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def events(node, since_seq: int = 0) -> list[dict]:
    return [r for r in audit(node, "--xml") if r["seq"] > since_seq]


def last_seq(node) -> int:
    recs = audit(node)
    return recs[-1]["seq"] if recs else 0


@pytest.fixture(scope="module")
def schema():
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


@pytest.fixture(scope="module")
def storescp(tmp_path_factory):
    scp = StoreSCP(tmp_path_factory.mktemp("scp"), "STORESCP").start()
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def ruled(module_node_factory, storescp):
    """A node with AE rules; STORESCP and ELSEWHERE are C-MOVE destinations."""
    node = module_node_factory(start=False, remote_aes=[RemoteAE("STORESCP", storescp.port),
                                                        RemoteAE("ELSEWHERE", storescp.port)])
    node.config_path.write_text(node.config_path.read_text() + RULES)
    node.start()
    return node


def test_an_unknown_ae_is_rejected_and_audited(ruled):
    before = last_seq(ruled)
    r = dcmtk("echoscu", "-aet", "NOBODY", "-aec", ruled.ae_title, "127.0.0.1",
              ruled.dicom_port)
    assert r.returncode != 0
    assert "calling ae title not recogni" in (r.stdout + r.stderr).lower()
    alerts = [e for e in events(ruled, before) if e["event"] == "security-alert"]
    assert [a["user"] for a in alerts] == ["NOBODY"]
    assert alerts[0]["outcome"] == 4
    # the node keeps serving the AEs it knows
    assert echo(ruled, "CT1") == SUCCESS


def test_an_ae_calling_from_another_host_is_rejected(ruled):
    r = dcmtk("echoscu", "-aet", "FAR", "-aec", ruled.ae_title, "127.0.0.1", ruled.dicom_port)
    assert r.returncode != 0
    assert "calling ae title not recogni" in (r.stdout + r.stderr).lower()
    # the log line may follow the rejection by a moment
    assert wait_for(lambda: "not from one of its configured hosts" in ruled.log_text(), 10)


def test_rights_refuse_with_not_authorized_and_audit_once(ruled, corpora):
    insts = corpora.native.instances
    before = last_seq(ruled)
    # WS may not store: every C-STORE gets 0124H, one refusal record for the association
    statuses = store(ruled, insts[:3], ae_title="WS")
    assert set(statuses.values()) == {NOT_AUTHORIZED}, {hexs(s) for s in statuses.values()}
    # CT1 may store, but not find or retrieve
    assert set(store(ruled, insts, ae_title="CT1").values()) == {SUCCESS}
    res = find(ruled, "STUDY", {"StudyInstanceUID": ""}, ae_title="CT1")
    assert res.status == NOT_AUTHORIZED and not res.identifiers
    got = c_get(ruled, "STUDY", {"StudyInstanceUID": insts[0].study_uid}, ae_title="CT1")
    assert got.status == NOT_AUTHORIZED and not got.received
    # WS may find, get, and move to STORESCP only
    res = find(ruled, "STUDY", {"StudyInstanceUID": ""}, ae_title="WS")
    assert res.status == SUCCESS and len(res.identifiers) == 1
    moved = c_move(ruled, "STUDY", {"StudyInstanceUID": insts[0].study_uid}, "ELSEWHERE",
                   ae_title="WS")
    assert moved.status == NOT_AUTHORIZED
    moved = c_move(ruled, "STUDY", {"StudyInstanceUID": insts[0].study_uid}, "STORESCP",
                   ae_title="WS")
    assert moved.status == SUCCESS, hexs(moved.status)

    evs = events(ruled, before)
    alerts = [(e["user"], e["event"]) for e in evs if e["event"] == "security-alert"]
    assert alerts == [("WS", "security-alert"), ("CT1", "security-alert"),
                      ("CT1", "security-alert"), ("WS", "security-alert")], alerts
    assert "WS" in ruled.log_text() and "may not store" in ruled.log_text()
    assert "may not move to \"ELSEWHERE\"" in ruled.log_text()


def test_a_scripted_session_leaves_one_valid_record_per_access(node_factory, corpora, schema,
                                                                storescp):
    node = node_factory(remote_aes=[RemoteAE("STORESCP", storescp.port)])
    corpus = corpora.issuers  # 3 patients, one study each, 6 instances
    studies = corpus.studies()
    assert len(studies) == 3
    before = last_seq(node)

    # one association storing three studies: one "instances stored" record per study
    assert set(store(node, corpus.instances, ae_title="MODALITY").values()) == {SUCCESS}
    # one C-FIND: one query record
    res = find(node, "STUDY", {"StudyInstanceUID": "", "PatientID": ""}, ae_title="VIEWER")
    assert res.status == SUCCESS and len(res.identifiers) == 3
    # one C-GET of one study: one transfer record for it
    uid = corpus.instances[0].study_uid
    got = c_get(node, "STUDY", {"StudyInstanceUID": uid}, ae_title="VIEWER")
    assert got.status == SUCCESS and len(got.received) == len(studies[uid])
    # one C-MOVE of one study to STORESCP: one transfer record naming the destination
    moved = c_move(node, "STUDY", {"StudyInstanceUID": uid}, "STORESCP", ae_title="VIEWER")
    assert moved.status == SUCCESS

    evs = events(node, before)
    assert [e["event"] for e in evs] == ["instances-stored"] * 3 + ["query"] + \
        ["instances-transferred"] * 2, [e["event"] for e in evs]
    stored = evs[:3]
    assert {e["study_uids"][0] for e in stored} == set(studies)
    for e in stored:
        assert e["user"] == "MODALITY" and e["outcome"] == 0
        inst = studies[e["study_uids"][0]][0]
        assert e["patient_id"] == inst.patient_id
    issuers = sorted(e.get("patient_issuer") or "" for e in stored)
    assert issuers == sorted(["HOSP_A", "HOSP_B", DEFAULT_ISSUER]), issuers
    query = evs[3]
    assert query["user"] == "VIEWER" and query["study_uids"] == []
    for e in evs[4:]:
        assert e["user"] == "VIEWER" and e["study_uids"] == [uid]
    assert "STORESCP" in evs[5]["xml"] and "STORESCP" not in evs[4]["xml"]
    for e in evs:
        doc = etree.fromstring(e["xml"].encode())
        assert schema.validate(doc), f"record {e['seq']} ({e['event']}): {schema.error_log}"

    # stopping is audited too, and the chain is intact
    node.stop()
    assert audit(node)[-1]["event"] == "application-stop"
    r = run_pacsgrid(["audit", "verify", "--data", str(node.data_dir)], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stores_acknowledged_before_a_kill_are_audited_at_restart(node_factory, corpora, schema):
    """Stores are audited per study when the association ends; a node killed before that has
    already acknowledged them. The marks committed with each instance let the next start
    write those records: one per study, dated when stored, and none twice."""
    node = node_factory()
    corpus = corpora.issuers  # 3 patients, one study each, 6 instances
    studies = corpus.studies()
    before = last_seq(node)

    ae = make_ae("MODALITY")
    ae.requested_contexts = store_contexts((i.sop_class, i.ts) for i in corpus.instances)
    assoc = ae.associate(HOST, node.dicom_port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        for inst in corpus.instances:
            assert status_of(assoc.send_c_store(inst.path)) == SUCCESS
        # acknowledged, association still open: nothing of it is in the log yet
        assert [e for e in events(node, before) if e["event"] == "instances-stored"] == []
        node.kill9()
    finally:
        assoc.abort()
        ae.shutdown()

    node.start()
    assert "wrote the audit records of the stores it had acknowledged" in node.log_text()
    stored = [e for e in events(node, before) if e["event"] == "instances-stored"]
    assert sorted(e["study_uids"][0] for e in stored) == sorted(studies), stored
    for e in stored:
        uid = e["study_uids"][0]
        assert e["user"] == "MODALITY" and e["outcome"] == 0
        assert e["patient_id"] == studies[uid][0].patient_id
        assert "recorded at restart" in e["xml"]
        doc = etree.fromstring(e["xml"].encode())
        assert schema.validate(doc), f"record {e['seq']}: {schema.error_log}"

    # the marks are gone: another restart writes nothing again, and the chain is intact
    node.restart()
    again = [e for e in events(node, before) if e["event"] == "instances-stored"]
    assert [e["seq"] for e in again] == [e["seq"] for e in stored]
    node.stop()
    r = run_pacsgrid(["audit", "verify", "--data", str(node.data_dir)], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_open_dicom_port_without_rules_is_refused_unless_insecure(node_factory):
    node = node_factory(start=False)
    text = node.config_path.read_text().replace('bind = "127.0.0.1"', 'bind = "0.0.0.0"', 1)
    node.config_path.write_text(text)
    r = run_pacsgrid(["serve", "--config", str(node.config_path)], timeout=30)
    assert r.returncode != 0
    assert "insecure configuration" in r.stderr and "[[access.ae]]" in r.stderr
    node.start(argv=["serve", "--config", str(node.config_path), "--insecure"])
    assert echo(node) == SUCCESS
    assert "starting anyway: --insecure was given" in node.log_text()
