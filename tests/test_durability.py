"""Crash safety: `kill -9` during ingest loses nothing that was acknowledged.

A success status for a C-STORE goes back only after the blob is fsynced and the index row is
committed (DESIGN.md invariants), so every instance a sender saw acknowledged must survive any
number of SIGKILLs, byte for byte, and the data dir must pass `pacsgrid check`."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import threading
import time

import pydicom
import pytest

from harness import (DCMTK, STORESCU_MIXED_CFG, SUCCESS, assert_identical, c_get, decode_raw,
                     dcmtk_env, hexs, instance_uids, make_ae, run_pacsgrid, status_of,
                     store_contexts, wait_for)

SEED = int(os.environ.get("PACSGRID_TEST_SEED", str(int(time.time()) % 100000)))


class Sender(threading.Thread):
    """Stores its instances over and over until every one is acknowledged, reconnecting after
    each crash of the node. Records which instances were acknowledged, and when."""

    def __init__(self, node, insts, name, deadline, go: threading.Event):
        super().__init__(daemon=True)
        self.go = go  # cleared while the test checks the node between kills
        self.node, self.todo, self.name_ae, self.deadline = node, list(insts), name, deadline
        self.acked: dict[str, float] = {}      # uid -> time of the acknowledgement
        self.unexpected: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.associations = 0

    def run(self):
        ctxs = store_contexts({(i.sop_class, i.ts) for i in self.todo})
        while self.todo and time.monotonic() < self.deadline:
            ae = make_ae(self.name_ae)
            ae.requested_contexts = ctxs
            # short: pynetdicom does not always notice at once that a SIGKILLed peer is gone
            ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 5, 10, 10
            try:
                assoc = ae.associate("127.0.0.1", self.node.dicom_port,
                                     ae_title=self.node.ae_title)
                if not assoc.is_established:
                    time.sleep(0.1)
                    continue
                self.associations += 1
                while self.todo and assoc.is_established:
                    self.go.wait()
                    inst = self.todo[0]
                    try:
                        s = status_of(assoc.send_c_store(inst.path))
                    except Exception:  # noqa: BLE001 - association died under us
                        break
                    if s == SUCCESS:
                        with self.lock:
                            self.acked[inst.sop_uid] = time.monotonic()
                        self.todo.pop(0)
                    elif s is None:
                        break  # no answer: the node died; send it again later
                    else:
                        self.unexpected.append((inst.sop_uid, hexs(s)))
                        self.todo.pop(0)
                if assoc.is_established:
                    assoc.release()
            except Exception:  # noqa: BLE001 - connection refused while the node restarts
                time.sleep(0.1)
            finally:
                ae.shutdown()

    def n_acked(self):
        with self.lock:
            return len(self.acked)

    def acked_uids(self):
        with self.lock:
            return set(self.acked)


@pytest.mark.timeout(900)
def test_kill9_during_ingest_loses_nothing_acknowledged(node_factory, corpora):
    rng = random.Random(SEED)
    corpus = corpora.durability
    node = node_factory()
    insts = corpus.instances
    go = threading.Event()
    go.set()
    senders = [Sender(node, insts[0::2], "DUR0", time.monotonic() + 600, go),
               Sender(node, insts[1::2], "DUR1", time.monotonic() + 600, go)]
    for s in senders:
        s.start()

    def total():
        return sum(s.n_acked() for s in senders)

    kills = []
    for k in range(5):
        start = total()
        target = start + rng.randint(10, 60)
        assert wait_for(lambda: total() >= target or all(not s.is_alive() for s in senders),
                        120), f"ingest stalled at {total()} acknowledged (kill {k + 1})"
        time.sleep(rng.uniform(0, 0.05))  # ingest runs at hundreds of instances a second
        acked_before = set().union(*(s.acked_uids() for s in senders))
        node.kill9()
        kills.append(len(acked_before))
        time.sleep(rng.uniform(0, 0.5))
        node.start()
        # everything acknowledged before the kill is there right after the restart
        go.clear()  # (senders pause meanwhile, so that the ingest outlasts five kills)
        present = set(instance_uids(node))
        go.set()
        lost = acked_before - present
        assert not lost, (f"kill {k + 1} (seed {SEED}): {len(lost)} acknowledged instances "
                          f"gone after restart, e.g. {sorted(lost)[:3]}")

    for s in senders:
        s.join(timeout=600)
    assert all(not s.is_alive() for s in senders), "senders did not finish"
    unexpected = [u for s in senders for u in s.unexpected]
    assert not unexpected, f"statuses other than success: {unexpected[:5]}"
    acked = set().union(*(s.acked_uids() for s in senders))
    assert acked == {i.sop_uid for i in insts}, "not every instance was acknowledged in the end"
    assert len(kills) == 5 and kills[-1] < len(insts), f"kills came too late: {kills}"

    # after the last restart: every acknowledged instance retrievable, byte-identical
    uids = instance_uids(node)
    assert len(uids) == len(set(uids)), "an instance is answered twice"
    assert set(uids) == acked
    for study_uid, study in corpus.studies().items():
        got = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
        assert got.status == SUCCESS, f"C-GET study: {hexs(got.status)}"
        assert_identical({i.sop_uid: i.data for i in study}, got.received,
                         f"study {study_uid} after 5 kills (seed {SEED})")

    node.stop()
    r = run_pacsgrid(["check", "--data", node.data_dir], timeout=600)
    out = r.stdout
    js = json.loads(out[out.index("{"):out.rindex("}") + 1]) if "{" in out else None
    assert r.returncode == 0, f"`pacsgrid check` after 5 kills: exit {r.returncode}, {js}\n" \
        f"{r.stderr[-2000:]}"
    assert js and js["instances"] == len(insts), js


@pytest.mark.timeout(600)
def test_kill9_during_storescu_ingest(node_factory, corpora):
    """dcmtk storescu (one association, mixed syntaxes) is killed under: every file it saw
    acknowledged is there after the restart, with the same content."""
    rng = random.Random(SEED + 1)
    corpus = corpora.durability
    node = node_factory()
    subset = corpus.top_dirs()[:2]
    proc_args = ["-v", "-xf", STORESCU_MIXED_CFG, "Mixed", "-aet", "STORESCU", "-aec",
                 node.ae_title, "+sd", "+r", "-nh"]
    proc = subprocess.Popen([DCMTK["storescu"], *map(str, proc_args), "127.0.0.1",
                             str(node.dicom_port), *map(str, subset)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dcmtk_env())
    lines: list[str] = []

    def reader():
        for line in proc.stdout:
            lines.append(line)
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    target = rng.randint(40, 200)
    wait_for(lambda: sum("Received Store Response (Success)" in l for l in lines) >= target
             or proc.poll() is not None, 120)
    node.kill9()
    proc.wait(timeout=60)
    t.join(timeout=10)

    # map acknowledgements to files: "Sending file: X" ... "Received Store Response (Success)"
    acked, current = [], None
    for line in lines:
        m = re.search(r"Sending file: (.+)$", line.strip())
        if m:
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None
    assert acked, "storescu saw nothing acknowledged before the kill:\n" + "".join(lines[-20:])
    by_path = {str(i.path): i for i in corpus.instances}
    acked_insts = [by_path[p] for p in acked]

    node.start()
    present = set(instance_uids(node))
    lost = [i.sop_uid for i in acked_insts if i.sop_uid not in present]
    assert not lost, f"{len(lost)} of {len(acked_insts)} acknowledged instances lost"
    # storescu may have converted explicit <-> implicit: compare decoded content
    for study_uid in {i.study_uid for i in acked_insts}:
        want = {i.sop_uid: i for i in acked_insts if i.study_uid == study_uid}
        got = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
        for uid, inst in want.items():
            assert uid in got.received, f"{uid} acknowledged but not retrievable"
            ts = pydicom.uid.UID(got.transfer_syntaxes[uid])
            ds = decode_raw(got.received[uid], ts)
            orig = pydicom.dcmread(inst.path)
            assert ds.SOPInstanceUID == orig.SOPInstanceUID
            assert ds.PixelData == orig.PixelData, f"{uid}: pixel data differs"
    node.stop()
    r = run_pacsgrid(["check", "--data", node.data_dir], timeout=300)
    assert r.returncode == 0, f"`pacsgrid check` after kill: {r.stdout}\n{r.stderr[-2000:]}"

