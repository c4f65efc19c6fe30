"""C-ECHO and C-STORE with real clients: dcmtk echoscu/storescu, pynetdicom, raw PDUs."""
from __future__ import annotations

import threading
from collections import Counter

import pytest

import rawdul
from harness import (SUCCESS, assert_identical, c_get, dcmtk, echo, hexs, instance_uids,
                     pydicom_sample_files, STORESCU_MIXED_CFG, store)


def test_echoscu(node):
    r = dcmtk("echoscu", "-v", "-aet", "ECHOSCU", "-aec", node.ae_title, "127.0.0.1",
              node.dicom_port, timeout=60)
    assert r.returncode == 0, f"echoscu failed:\n{r.stdout}\n{r.stderr}"
    assert "Received Echo Response (Success)" in r.stdout + r.stderr


def test_pynetdicom_echo(node):
    assert echo(node) == SUCCESS


def storescu_mixed(node, dirs, aet="STORESCU"):
    return dcmtk("storescu", "-v", "-xf", STORESCU_MIXED_CFG, "Mixed", "-aet", aet,
                 "-aec", node.ae_title, "+sd", "+r", "127.0.0.1", node.dicom_port,
                 *dirs, timeout=300)


def test_storescu_mixed_corpus_every_file_stored_once(node, corpora):
    corpus = corpora.mixed
    r = storescu_mixed(node, corpus.top_dirs())
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"storescu exited {r.returncode}:\n{out[-5000:]}"
    successes = out.count("Received Store Response (Success)")
    assert successes == len(corpus), (
        f"storescu saw {successes} successful stores of {len(corpus)} files:\n"
        + "\n".join(l for l in out.splitlines() if "Store Response" in l and "Success" not in l))
    uids = instance_uids(node)
    repeated = {u: n for u, n in Counter(uids).items() if n > 1}
    assert not repeated, f"instances answered more than once: {repeated}"
    assert sorted(uids) == sorted(corpus.by_uid), "stored set differs from the corpus"

    # The whole corpus again: every store succeeds, nothing is stored twice.
    r = storescu_mixed(node, corpus.top_dirs())
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"second storescu exited {r.returncode}:\n{out[-5000:]}"
    assert out.count("Received Store Response (Success)") == len(corpus)
    assert sorted(instance_uids(node)) == sorted(corpus.by_uid)


def test_pynetdicom_store_mixed_corpus_every_file_stored_once(node, corpora):
    corpus = corpora.mixed
    res = store(node, corpus.instances)
    bad = {str(p.relative_to(corpus.root)): hexs(s) for p, s in res.items() if s != SUCCESS}
    assert not bad, f"C-STORE not successful: {bad}"
    uids = instance_uids(node)
    assert sorted(uids) == sorted(corpus.by_uid)
    # again: same UID, same bytes -> success and still one copy
    res = store(node, corpus.instances)
    assert all(s == SUCCESS for s in res.values()), {str(p): hexs(s) for p, s in res.items()}
    assert sorted(instance_uids(node)) == sorted(corpus.by_uid)


def test_concurrent_associations_store_everything_once(node, corpora):
    """Four associations storing at once (overlapping halves: each file sent twice)."""
    corpus = corpora.mixed.instances + corpora.native.instances
    chunks = [corpus[0::2], corpus[1::2], corpus[::-2], corpus[-2::-2]]
    results, errors = [], []

    def worker(chunk, n):
        try:
            results.append(store(node, chunk, ae_title=f"PAR{n}"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(c, n)) for n, c in enumerate(chunks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    bad = [(str(p), hexs(s)) for r in results for p, s in r.items() if s != SUCCESS]
    assert not bad, f"{len(bad)} stores not successful, e.g. {bad[:5]}"
    assert sorted(instance_uids(node)) == sorted({i.sop_uid for i in corpus})


def test_echo_with_command_split_over_two_pdus(node):
    a = rawdul.RawAssociation(node.dicom_port)
    try:
        assert a.associate(node.ae_title) == rawdul.A_ASSOCIATE_AC
        assert a.accepted(1)
        cmd = rawdul.echo_rq(7)
        a.send(rawdul.p_data(rawdul.pdv(1, True, False, cmd[:10])))
        a.send(rawdul.p_data(rawdul.pdv(1, True, False, cmd[10:30]),
                             rawdul.pdv(1, True, True, cmd[30:])))
        assert a.status() == SUCCESS
        a.release()
    finally:
        a.close()


@pytest.mark.parametrize("fragment", [1000, 16000])
def test_store_with_command_and_data_set_in_many_fragments(node, corpora, fragment):
    """A data set split over many PDVs and PDUs is reassembled and stored byte for byte."""
    inst = next(i for i in corpora.mixed.instances if i.ts == "1.2.840.10008.1.2.4.80")
    data = inst.data
    a = rawdul.RawAssociation(node.dicom_port)
    try:
        assert a.associate(node.ae_title, contexts=[(1, inst.sop_class, [inst.ts])]) == \
            rawdul.A_ASSOCIATE_AC
        assert a.accepted(1), f"context {inst.sop_class}/{inst.ts} not accepted: {a.contexts}"
        cmd = rawdul.store_rq(inst.sop_class, inst.sop_uid, 3)
        a.send(rawdul.p_data(rawdul.pdv(1, True, False, cmd[:20])))
        a.send(rawdul.p_data(rawdul.pdv(1, True, True, cmd[20:])))
        chunks = [data[k:k + fragment] for k in range(0, len(data), fragment)]
        for n, ch in enumerate(chunks):
            # two PDVs per PDU where possible
            a.send(rawdul.p_data(rawdul.pdv(1, False, n == len(chunks) - 1, ch)))
        status = a.status()
        assert status == SUCCESS, f"C-STORE status {hexs(status)}"
        a.release()
    finally:
        a.close()
    got = c_get(node, "IMAGE", {"StudyInstanceUID": inst.study_uid,
                                "SeriesInstanceUID": inst.series_uid,
                                "SOPInstanceUID": inst.sop_uid})
    assert got.status == SUCCESS, hexs(got.status)
    assert_identical({inst.sop_uid: data}, got.received, "fragmented store")


def test_many_syntaxes_and_sop_classes_from_pydicom_test_files(node):
    """pydicom ships real sample files of many SOP classes and transfer syntaxes: every one
    that is a well-formed Part 10 storage object must be accepted (0x0000)."""
    candidates = pydicom_sample_files()
    assert len(candidates) >= 20, f"only {len(candidates)} pydicom sample files usable"
    # at most 120 presentation contexts per association
    statuses = {}
    for k in range(0, len(candidates), 40):
        statuses.update(store(node, candidates[k:k + 40]))
    bad = {p.split("/")[-1]: hexs(s) for p, s in ((str(p), s) for p, s in statuses.items())
           if s != SUCCESS}
    assert not bad, f"{len(bad)} of {len(candidates)} sample files not stored: {bad}"
    assert len(set(instance_uids(node))) == len(candidates)
