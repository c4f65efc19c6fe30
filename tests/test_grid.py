"""The data grid end to end: separate `pacsgrid serve` processes made by `pacsgrid grid init`,
talking mutual TLS on loopback, driven with dcmtk and pynetdicom, killed for real.

Each scenario gets its own grid (a few seconds to start), with short sync and repair
intervals and `lost_after` of a few seconds, so nothing here waits for long timers."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest

from harness import (SUCCESS, Corpus, Node, RemoteAE, StoreSCP, assert_identical, c_get, c_move,
                     dataset_bytes, dcmtk, find, gen_dataset, hexs, http_get, run_pacsgrid,
                     store_ok)

LOST_AFTER = 4
SETTLE = 60.0


# ------------------------------------------------------------------------------ the grid
def free_block(sites: int) -> int:
    """A base port whose whole block (10 ports a site) is free on loopback."""
    for _ in range(200):
        base = random.randrange(20000, 60000, 10)
        ports = [base + 10 * i + k for i in range(sites) for k in range(3)]
        ok = True
        for p in ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def audit_records(node: Node) -> list[dict]:
    r = run_pacsgrid(["audit", "search", "--data", str(node.data_dir), "--json"], timeout=60)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def http_json(port: int, path: str, method: str = "GET", body: dict | None = None,
              timeout: float = 10.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Grid:
    """A grid made by `pacsgrid grid init`, one harness Node per site."""

    def __init__(self, workdir: Path, sites: str = "a,b,c", copies: int = 2,
                 extra: dict[str, str] | None = None, remote_aes: list[RemoteAE] = (),
                 init_args: list[str] = ()):
        self.dir = workdir / "grid"
        names = sites.split(",")
        base = free_block(len(names))
        r = run_pacsgrid(["grid", "init", "--sites", sites, "--out", str(self.dir),
                          "--base-port", str(base), "--copies", str(copies),
                          "--lost-after", str(LOST_AFTER), *init_args])
        assert r.returncode == 0, r.stderr
        self.info = json.loads((self.dir / "grid.json").read_text())
        self.nodes: dict[str, Node] = {}
        for s in self.info["sites"]:
            cfg = Path(s["config"]).read_text()
            for key, value in {"sync_interval_ms": "100", "repair_interval_secs": "1",
                               "anti_entropy_interval_secs": "3",
                               **(extra or {})}.items():
                cfg, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", cfg)
                assert n == 1, f"{key} not in the config grid init wrote"
            for r_ae in remote_aes:
                cfg += (f'\n[[remote_ae]]\nae_title = "{r_ae.ae_title}"\nhost = "{r_ae.host}"\n'
                        f"port = {r_ae.port}\n")
            node = Node(workdir / s["name"], raw_config=cfg, name=f"site-{s['name']}")
            node.dicom_port, node.http_port = s["dicom_port"], s["http_port"]
            node.ae_title = s["ae_title"]
            node.data_dir = Path(s["data_dir"])
            self.nodes[s["name"]] = node

    def __getitem__(self, site: str) -> Node:
        return self.nodes[site]

    def start(self, *sites: str) -> "Grid":
        for s in sites or self.nodes:
            self.nodes[s].start()
        return self

    def close(self) -> None:
        for n in self.nodes.values():
            n.close()

    def status(self, site: str) -> dict:
        code, body = http_json(self[site].http_port, "/api/v1/grid")
        assert code == 200, body
        return body

    def running(self) -> list[str]:
        return [s for s, n in self.nodes.items() if n.running()]

    def settle(self, expect_instances: int, sites: list[str] | None = None,
               timeout: float = SETTLE) -> dict[str, dict]:
        """Waits until every running site has read every live peer's feed, knows
        `expect_instances`, and counts nothing under-replicated."""
        sites = sites or self.running()
        # only counts made after this call began say anything about what led up to it
        start_ms = max(self.status(s)["now_ms"] for s in sites)
        deadline = time.monotonic() + timeout
        last = {}
        while time.monotonic() < deadline:
            last = {s: self.status(s) for s in sites}
            ok = True
            for s, st in last.items():
                if st["instances"] != expect_instances or st["under_replicated"] != 0:
                    ok = False
                for peer in st["sites"]:
                    if peer["self"] or peer["name"] not in sites:
                        continue
                    if not peer["reachable"] or peer["lag"] != 0:
                        ok = False
            # the counts are made by a pass after the last change: wait for a fresh one
            if ok and all(st["counted_at_ms"] > start_ms for st in last.values()):
                return last
            time.sleep(0.2)
        raise AssertionError(f"grid did not settle in {timeout}s: " + json.dumps(
            {s: {k: v for k, v in st.items() if k != "conflicts"} for s, st in last.items()},
            indent=1)[:4000])

    def peer(self, site: str, name: str) -> dict:
        """What `site`'s grid status says of site `name`."""
        return next(p for p in self.status(site)["sites"] if p["name"] == name)

    def holders(self, site: str, sop_uid: str) -> list[str]:
        code, body = http_json(self[site].http_port, f"/api/v1/instances/{sop_uid}")
        assert code == 200, body
        return sorted(body["holders"])

    def blob_path(self, site: str, h: str) -> Path:
        return self[site].data_dir / "blobs" / h[:2] / h


@pytest.fixture
def grid_factory(tmp_path):
    made: list[Grid] = []

    def make(**kw) -> Grid:
        g = Grid(tmp_path / f"g{len(made)}", **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """Explicit VR only, so dcmtk getscu receives every object in its stored syntax."""
    return gen_dataset(tmp_path_factory.mktemp("gridcorpus"), "--patients", "2",
                       "--studies", "2", "--series", "2", "--instances", "3",
                       "--modality-mix", "MR=1", "--ts-mix", "explicit=1",
                       "--pid-prefix", "GRD", "--seed", "41")


def studies_of(c: Corpus) -> dict[str, list]:
    return c.studies()


def found_studies(node: Node) -> set[str]:
    res = find(node, "STUDY", {"StudyInstanceUID": ""})
    assert res.status == SUCCESS, hexs(res.status)
    return res.uids("StudyInstanceUID")


def wait_for(what: str, pred, timeout: float = 20.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def expected(insts) -> dict[str, bytes]:
    return {i.sop_uid: i.data for i in insts}


def getscu_study(node: Node, outdir: Path, study_uid: str) -> dict[str, bytes]:
    """dcmtk getscu of one study into `outdir` (emptied first, so it can be reused):
    SOP Instance UID -> data set bytes as received."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.iterdir():
        old.unlink()
    r = dcmtk("getscu", "-S", "+xe", "+B", "-aet", "GETSCU", "-aec", node.ae_title, "-od",
              outdir, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
              "127.0.0.1", node.dicom_port, timeout=180)
    assert r.returncode == 0, f"getscu exited {r.returncode}:\n{r.stderr[-2000:]}"
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p)
            for p in outdir.iterdir() if p.is_file()}


# ------------------------------------------------------------------------------ scenarios
def test_store_at_a_is_found_everywhere_and_retrieved_identical(grid_factory, corpus, tmp_path):
    scp = StoreSCP(tmp_path / "scp", "STORESCP").start()
    try:
        g = grid_factory(remote_aes=[RemoteAE("STORESCP", scp.port)]).start()
        store_ok(g["a"], corpus.instances)
        want = set(corpus.studies())
        t0 = time.monotonic()
        for s in ("b", "c"):
            wait_for(f"every study found by C-FIND at {s}",
                     lambda s=s: found_studies(g[s]) == want, timeout=10)
        seen_after = time.monotonic() - t0
        assert seen_after < 10

        # C-GET at C with dcmtk getscu: byte-identical, fetched from A where C holds no copy
        for study, insts in corpus.studies().items():
            got = getscu_study(g["c"], tmp_path / "get" / study, study)
            assert_identical(expected(insts), got, f"getscu at C of {study}")
        # C-MOVE at B to a dcmtk storescp
        for study, insts in corpus.studies().items():
            res = c_move(g["b"], "STUDY", {"StudyInstanceUID": study}, "STORESCP")
            assert res.status == SUCCESS, f"C-MOVE at B: {hexs(res.status)} {res.final}"
        assert_identical(expected(corpus.instances), scp.received(), "C-MOVE at B to storescp")
        # WADO-RS at C as well
        study, insts = next(iter(corpus.studies().items()))
        code, _ = http_json(g["c"].http_port, "/api/v1/grid")
        assert code == 200
        with urllib.request.urlopen(
                f"http://127.0.0.1:{g['c'].http_port}/dicom-web/studies/{study}", timeout=30) as r:
            assert r.status == 200
            body = r.read()
        for i in insts:
            assert i.data in body, f"WADO-RS at C lacks the bytes of {i.sop_uid}"
        # A's audit trail says which sites were sent which studies (one record per peer and
        # study, written within seconds); C's says what its own client retrieved
        def sent_by_a():
            return {(r["user"], r["study_uids"][0]) for r in audit_records(g["a"])
                    if r["event"] == "instances-transferred"}
        want_sent = {(site, st) for site in ("b", "c") for st in want}
        wait_for("A's audit of what B and C were sent", lambda: want_sent <= sent_by_a(),
                 timeout=15)
        at_c = [r for r in audit_records(g["c"]) if r["event"] == "instances-transferred"
                and r["user"] not in ("a", "b")]
        assert {r["study_uids"][0] for r in at_c} >= want
    finally:
        scp.stop()


def _holders_are_k_and_verified(g: Grid, corpus: Corpus, k: int, sites: list[str]):
    for inst in corpus.instances:
        views = {s: g.holders(s, inst.sop_uid) for s in sites}
        first = views[sites[0]]
        assert all(v == first for v in views.values()), f"sites disagree on holders: {views}"
        live = [h for h in first if h in sites]
        assert len(live) == k, f"{inst.sop_uid}: holders {first}, want {k} among {sites}"
        code, body = http_json(g[sites[0]].http_port, f"/api/v1/instances/{inst.sop_uid}")
        h = body["hash"]
        for s in live:
            assert dataset_bytes(g.blob_path(s, h).read_bytes()) == inst.data, (
                f"{s}'s copy of {inst.sop_uid} differs from what was stored")


def test_policy_k_copies_on_distinct_sites(grid_factory, corpus):
    g = grid_factory(copies=2).start()
    half = len(corpus) // 2
    store_ok(g["a"], corpus.instances[:half])
    store_ok(g["c"], corpus.instances[half:])
    g.settle(len(corpus))
    _holders_are_k_and_verified(g, corpus, 2, ["a", "b", "c"])


def test_a_site_lost_for_good(grid_factory, corpus, tmp_path):
    g = grid_factory(copies=2).start()
    store_ok(g["a"], corpus.instances)
    g.settle(len(corpus))
    g["a"].kill9()
    # retrievable at once at B and C, while A is merely unreachable
    for s in ("b", "c"):
        for study, insts in corpus.studies().items():
            res = c_get(g[s], "STUDY", {"StudyInstanceUID": study})
            assert_identical(expected(insts), res.received, f"C-GET at {s} with A down")
        assert found_studies(g[s]) == set(corpus.studies()), "C-FIND while A is down"
    # A is counted as lost after the grace period, and the copies are re-made with no one acting
    for s in ("b", "c"):
        wait_for(f"A counted as lost at {s}",
                 lambda s=s: g.peer(s, "a")["lost"],
                 timeout=LOST_AFTER + 15)
    g.settle(len(corpus), sites=["b", "c"])
    _holders_are_k_and_verified(g, corpus, 2, ["b", "c"])
    for s in ("b", "c"):
        res = c_get(g[s], "STUDY", {"StudyInstanceUID": corpus.instances[0].study_uid})
        assert res.status == SUCCESS
    assert "peer site unreachable" in g["b"].log_text()


def test_bytes_held_only_at_a_down_site_are_refused_up_front(grid_factory, corpus):
    """copies = 1: a study whose instances were stored partly at A, partly at B. With A down,
    B says before the first byte what it cannot give: C-GET fails those sub-operations,
    WADO-RS answers 206 with the rest and a Warning, 503 problem+json when nothing is left,
    and B keeps answering queries."""
    g = grid_factory(sites="a,b", copies=1).start()
    study, insts = next(iter(corpus.studies().items()))
    at_a, at_b = insts[:4], insts[4:]
    store_ok(g["a"], at_a)
    store_ok(g["b"], at_b)
    g.settle(len(insts))
    g["a"].kill9()
    wait_for("B sees A unreachable", lambda: not g.peer("b", "a")["reachable"], timeout=15)

    res = c_get(g["b"], "STUDY", {"StudyInstanceUID": study})
    assert set(res.received) == {i.sop_uid for i in at_b}
    assert res.status == 0xB000, hexs(res.status)
    assert res.final.NumberOfFailedSuboperations == len(at_a)
    # at once, from what B knows of A, not after a connection attempt per instance
    failed = [ln for ln in g["b"].log_text().splitlines() if "C-GET sub-operation failed" in ln]
    assert len(failed) == len(at_a) and all("held only at a, unreachable now" in ln
                                            for ln in failed), failed

    code, headers, body = http_get(g["b"].http_port, f"/dicom-web/studies/{study}", 30,
                                   'multipart/related; type="application/dicom"')
    assert code == 206, body[:300]
    assert headers["Warning"].startswith('299 pacsgrid "B000: left out 4 of 6 instances'), headers
    assert "held only at a, unreachable now" in headers["Warning"]
    for i in at_b:
        assert i.data in body
    for i in at_a:
        assert i.data not in body

    one = at_a[0]
    base = f"/dicom-web/studies/{study}/series/{one.series_uid}/instances/{one.sop_uid}"
    for path, accept in [(base, 'multipart/related; type="application/dicom"'),
                         (base + "/frames/1", 'multipart/related; type="application/octet-stream"'),
                         (base + "/rendered", "image/jpeg")]:
        code, headers, body = http_get(g["b"].http_port, path, 30, accept)
        assert code == 503, (path, code, body[:300])
        assert headers["Content-Type"] == "application/problem+json"
        detail = json.loads(body)["detail"]
        assert "held only at a, unreachable now" in detail, (path, detail)
    # the grid's metadata is all here: queries answer for the whole study
    assert found_studies(g["b"]) == {study}
    assert len(find(g["b"], "IMAGE", {"StudyInstanceUID": study, "SOPInstanceUID": ""}).identifiers) == 6
    assert "bytes held only at unreachable sites" in g["b"].log_text()


def test_a_hung_site_is_not_waited_for_and_serves_again_when_it_resumes(grid_factory, corpus):
    """A site that accepts connections but answers nothing (SIGSTOP: a frozen VM, a stalled
    disk): a retrieve at B of bytes held only there gives up (failed sub-operations) instead
    of hanging, B counts the site unreachable and then refuses at once; when the site
    resumes, the same retrieve brings every byte."""
    g = grid_factory(sites="a,b", copies=1).start()
    study, insts = next(iter(corpus.studies().items()))
    store_ok(g["a"], insts)
    g.settle(len(insts))
    pid = g["a"].proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        res = c_get(g["b"], "STUDY", {"StudyInstanceUID": study})
        # nothing could be sent: refused (A702), not a warning
        assert res.status == 0xA702 and not res.received, hexs(res.status)
        assert res.final.NumberOfFailedSuboperations == len(insts)
        wait_for("B counts the hung site unreachable",
                 lambda: not g.peer("b", "a")["reachable"], timeout=30)
        code, _, body = http_get(g["b"].http_port, f"/dicom-web/studies/{study}", 30,
                                 'multipart/related; type="application/dicom"')
        assert code == 503, body[:300]
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for("B sees A again", lambda: g.peer("b", "a")["reachable"], timeout=30)
    res = c_get(g["b"], "STUDY", {"StudyInstanceUID": study})
    assert res.status == SUCCESS, hexs(res.status)
    assert_identical(expected(insts), res.received, "C-GET at B after A resumed")


def test_a_stopped_site_catches_up(grid_factory, corpus):
    g = grid_factory(copies=2).start()
    g["b"].stop()
    studies = list(corpus.studies().values())
    at_a = [i for st in studies[::2] for i in st]
    at_c = [i for st in studies[1::2] for i in st]
    store_ok(g["a"], at_a)
    store_ok(g["c"], at_c)
    g["b"].start()
    g.settle(len(corpus))
    assert found_studies(g["b"]) == set(corpus.studies())
    res = find(g["b"], "IMAGE", {"StudyInstanceUID": corpus.instances[0].study_uid,
                                 "SOPInstanceUID": ""})
    res.uids("SOPInstanceUID")  # no duplicates
    code, st = http_json(g["b"].http_port, "/api/v1/status")
    assert st["counts"]["instances"] == len(corpus), st
    _holders_are_k_and_verified(g, corpus, 2, ["a", "b", "c"])


def test_a_wiped_site_rebuilds(grid_factory, corpus, tmp_path):
    g = grid_factory(copies=2).start()
    store_ok(g["c"], corpus.instances[:6])
    store_ok(g["a"], corpus.instances[6:])
    g.settle(len(corpus))
    held_before = next(p for p in g.status("c")["sites"] if p["self"])["instances_held"]
    assert held_before > 0
    g["c"].stop()
    shutil.rmtree(g["c"].data_dir)
    g["c"].start()
    g.settle(len(corpus))
    code, st = http_json(g["c"].http_port, "/api/v1/status")
    assert st["counts"]["instances"] == len(corpus)
    assert found_studies(g["c"]) == set(corpus.studies())
    _holders_are_k_and_verified(g, corpus, 2, ["a", "b", "c"])
    held_after = next(p for p in g.status("c")["sites"] if p["self"])["instances_held"]
    assert held_after == held_before, "C pulls back exactly what the policy assigns to it"
    for study, insts in corpus.studies().items():
        got = getscu_study(g["c"], tmp_path / "rebuilt" / study, study)
        assert_identical(expected(insts), got, f"getscu at rebuilt C of {study}")


def test_anti_entropy_finds_what_a_feed_missed(grid_factory, corpus, tmp_path):
    """C's feed cursors are moved past entries it never read (as when a site is lost before
    a peer reads the end of its feed); the digest comparison must still bring them."""
    import sqlite3
    studies = list(corpus.studies().items())
    first = [i for _, insts in studies[:1] for i in insts]
    (missed_uid, missed), rest = studies[1], [i for _, insts in studies[2:] for i in insts]
    g = grid_factory(copies=2).start()
    store_ok(g["a"], first)
    g.settle(len(first))
    g["c"].stop()
    store_ok(g["a"], missed)
    wait_for("B knows the study C will miss", lambda: g.status("b")["instances"] == len(
        first) + len(missed), timeout=20)
    heads = {s: next(p for p in g.status(s)["sites"] if p["self"])["feed_head"]
             for s in ("a", "b")}
    with sqlite3.connect(g["c"].data_dir / "index.sqlite") as db:
        for site, head in heads.items():
            assert db.execute("UPDATE grid_peers SET cursor = ? WHERE site = ?",
                              (head, site)).rowcount == 1
    g["c"].start()
    wait_for("the missed study found by C-FIND at C", lambda: missed_uid in found_studies(
        g["c"]), timeout=30)
    assert "anti-entropy found records the feeds had not brought" in g["c"].log_text()
    # later entries still come by the feed, and the grid settles with nothing lost
    store_ok(g["a"], rest)
    g.settle(len(corpus))
    assert found_studies(g["c"]) == set(corpus.studies())
    got = getscu_study(g["c"], tmp_path / "missed", missed_uid)
    assert_identical(expected(missed), got, "getscu at C of the study its feeds missed")
    _holders_are_k_and_verified(g, corpus, 2, ["a", "b", "c"])


def _big_instance(path: Path, frames: int) -> Path:
    """An uncompressed multi-frame MR of 8 MiB per frame, random pixels, written with pydicom."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.PatientID, ds.PatientName, ds.Modality = "BIG1", "Big^Transfer", "MR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 2048
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(7)
    ds.PixelData = rng.integers(0, 4096, size=frames * 2048 * 2048, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_copy_cut_off_by_a_kill_goes_on_where_it_stopped(grid_factory, tmp_path):
    """B is killed while it receives a 40 MB instance from A (pulls capped at 8 MB/s); after
    its restart it asks A only for the bytes it did not have, and its copy verifies."""
    big = _big_instance(tmp_path / "big.dcm", frames=5)
    g = grid_factory(sites="a,b", copies=2, extra={"transfer_max_mbps": "8"}).start()
    store_ok(g["a"], [big])
    partial_dir = g["b"].data_dir / "partial"

    def partial_bytes() -> int:
        return sum(f.stat().st_size for f in partial_dir.glob("*")) if partial_dir.exists() else 0

    wait_for("B has received part of the copy", lambda: partial_bytes() >= 6 << 20, timeout=30)
    g["b"].kill9()
    kept = partial_bytes()
    size = big.stat().st_size
    assert (6 << 20) <= kept < size, f"{kept} of {size} bytes kept"

    g["b"].start()
    g.settle(1)
    log = g["b"].log_text()
    resumed = [int(m) for m in re.findall(r"offset=(\d+).*resuming a copy cut off before", log)
               + re.findall(r"resuming a copy cut off before.*?offset=(\d+)", log)]
    assert resumed and resumed[0] == kept, (resumed, kept, g["b"].log_tail(40))
    assert not any(partial_dir.glob("*")), "the partial copy became the blob"
    sop = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    assert g.holders("b", sop) == ["a", "b"]
    h = next(p.name for p in (g["a"].data_dir / "blobs").rglob("*") if p.is_file()
             and p.stat().st_size > 30 << 20)
    assert g.blob_path("b", h).read_bytes() == g.blob_path("a", h).read_bytes()


def test_scrub_replaces_a_corrupt_copy(grid_factory, corpus):
    g = grid_factory(copies=2).start()
    store_ok(g["a"], corpus.instances[:4])
    g.settle(4)
    inst = corpus.instances[0]
    code, body = http_json(g["a"].http_port, f"/api/v1/instances/{inst.sop_uid}")
    path = g.blob_path("a", body["hash"])
    good = path.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(bad))
    code, report = http_json(g["a"].http_port, "/api/v1/grid/scrub", method="POST")
    assert code == 200, report
    assert report["corrupt"] == [inst.sop_uid], report
    wait_for("the corrupt copy replaced by a verified one",
             lambda: path.exists() and path.read_bytes() == good, timeout=20)
    g.settle(4)
    # the grid is quiet once settled: no fact goes back and forth between sites
    heads = {s: next(p for p in g.status(s)["sites"] if p["self"])["feed_head"] for s in "abc"}
    time.sleep(1.5)
    assert heads == {s: next(p for p in g.status(s)["sites"] if p["self"])["feed_head"]
                     for s in "abc"}
    assert "scrub: copy is corrupt" in g["a"].log_text()
    res = c_get(g["a"], "IMAGE", {"StudyInstanceUID": inst.study_uid,
                                  "SeriesInstanceUID": inst.series_uid,
                                  "SOPInstanceUID": inst.sop_uid})
    assert_identical({inst.sop_uid: inst.data}, res.received, "C-GET after repair")


def test_peers_with_foreign_or_unknown_certificates_are_refused(grid_factory, tmp_path):
    g = grid_factory().start("a")
    grid_port = int(g.info["sites"][0]["grid_url"].rsplit(":", 1)[1])
    # another grid's CA, same site name "b"
    other = tmp_path / "other"
    r = run_pacsgrid(["grid", "init", "--sites", "b,x", "--out", str(other),
                      "--base-port", "1100"])
    assert r.returncode == 0, r.stderr

    def contact(cert_dir: Path, name: str):
        ctx = ssl.create_default_context(cafile=str(g.dir / "ca.pem"))
        ctx.load_cert_chain(str(cert_dir / f"{name}.pem"), str(cert_dir / f"{name}.key"))
        with socket.create_connection(("127.0.0.1", grid_port), timeout=5) as sock:
            with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /grid/v1/hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
                return data

    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        contact(other, "b")
    wait_for("the refusal logged", lambda: "handshake" in g["a"].log_text().lower(), timeout=5)
    # a certificate of the right CA for a site that is not configured: 403
    r = run_pacsgrid(["grid", "add-site", "d", "--dir", str(g.dir)])
    assert r.returncode == 0, r.stderr
    answer = contact(g.dir, "d")
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert "unknown site d" in g["a"].log_text()
    # the configured peer b gets in
    assert contact(g.dir, "b").startswith(b"HTTP/1.1 200")
    # both refusals are in A's audit trail as node-authentication alerts
    alerts = [r for r in audit_records(g["a"]) if r["event"] == "security-alert"]
    assert [r["user"] for r in alerts] == ["unknown peer", "d"], alerts


def test_prefetch_brings_priors_before_they_are_asked_for(grid_factory, tmp_path):
    c = gen_dataset(tmp_path / "pf", "--patients", "1", "--studies", "3", "--series", "1",
                    "--instances", "2", "--modality-mix", "CT=1", "--ts-mix", "explicit=1",
                    "--pid-prefix", "PFX", "--seed", "7")
    studies = sorted(c.studies().values(), key=lambda s: s[0].study_date)
    priors, new = studies[:-1], studies[-1]
    g = grid_factory(sites="a,b", copies=1,
                     extra={"enabled": "true", "last_n": "5"}).start()
    store_ok(g["a"], [i for st in priors for i in st])
    g.settle(4)
    for st in priors:
        assert g.holders("b", st[0].sop_uid) == ["a"], "copies = 1: priors live at A only"
    store_ok(g["b"], new)
    for st in priors:
        for i in st:
            wait_for(f"prior {i.sop_uid} held at B", lambda i=i: "b" in g.holders("b", i.sop_uid),
                     timeout=20)
    assert "prefetching priors" in g["b"].log_text()
    # A must know the new study before it is asked to prefetch it: B's feed reaches A within
    # a sync interval, and B may have its priors sooner than that.
    for i in new:
        wait_for(f"{i.sop_uid} known at A",
                 lambda i=i: http_json(g["a"].http_port, f"/api/v1/instances/{i.sop_uid}")[0] == 200,
                 timeout=20)
    # explicit prefetch through REST at A: the new study comes to A
    code, body = http_json(g["a"].http_port, "/api/v1/prefetch", method="POST",
                           body={"patient_id": new[0].patient_id})
    assert code == 200, body
    assert new[0].study_uid in body["studies"]
    for i in new:
        wait_for(f"{i.sop_uid} held at A", lambda i=i: "a" in g.holders("a", i.sop_uid),
                 timeout=20)
    code, body = http_json(g["a"].http_port, "/api/v1/prefetch", method="POST", body={})
    assert code == 400


def test_deletes_travel_as_tombstones_and_bytes_go_last(grid_factory, corpus):
    g = grid_factory(copies=2).start()
    study, insts = next(iter(corpus.studies().items()))
    store_ok(g["a"], insts)
    g.settle(len(insts))
    hashes = {}
    for i in insts:
        _, body = http_json(g["a"].http_port, f"/api/v1/instances/{i.sop_uid}")
        hashes[i.sop_uid] = (body["hash"], g.holders("a", i.sop_uid))
    code, _ = http_json(g["b"].http_port, f"/api/v1/studies/{study}", method="DELETE")
    assert code == 200
    for s in ("a", "b", "c"):
        wait_for(f"study gone at {s}", lambda s=s: study not in found_studies(g[s]), timeout=10)
    for sop, (h, holders) in hashes.items():
        for s in holders:
            wait_for(f"bytes of {sop} removed at {s}", lambda s=s, h=h: not g.blob_path(s, h).exists(),
                     timeout=20)
    g.settle(0)


def test_same_uid_with_other_bytes_at_two_sites_is_a_reported_conflict(grid_factory, corpus,
                                                                      tmp_path):
    g = grid_factory(sites="a,b", copies=1).start()
    inst = corpus.instances[0]
    other = tmp_path / "other.dcm"
    from harness import rewrite
    rewrite(inst.path, other, StudyDescription="A DIFFERENT OBJECT")
    g["b"].stop()
    store_ok(g["a"], [inst])
    g["a"].stop()
    g["b"].start()
    store_ok(g["b"], [other])
    g["a"].start()
    for s in ("a", "b"):
        conflicts = wait_for(f"conflict reported at {s}",
                             lambda s=s: g.status(s)["conflicts"], timeout=15)
        assert conflicts[0]["sop_instance_uid"] == inst.sop_uid
    # both objects are kept: each site still serves its own
    res = c_get(g["a"], "IMAGE", {"StudyInstanceUID": inst.study_uid,
                                  "SeriesInstanceUID": inst.series_uid,
                                  "SOPInstanceUID": inst.sop_uid})
    assert_identical({inst.sop_uid: inst.data}, res.received, "A keeps its object")
    res = c_get(g["b"], "IMAGE", {"StudyInstanceUID": inst.study_uid,
                                  "SeriesInstanceUID": inst.series_uid,
                                  "SOPInstanceUID": inst.sop_uid})
    assert_identical({inst.sop_uid: dataset_bytes(other)}, res.received, "B keeps its object")
    assert "grid conflict" in g["a"].log_text() + g["b"].log_text()


def test_grid_status_cli_and_rest(grid_factory):
    g = grid_factory().start()
    st = wait_for("all peers reachable", lambda: (lambda s: s if all(
        p["reachable"] for p in s["sites"]) else None)(g.status("a")), timeout=10)
    assert [p["name"] for p in st["sites"]] == ["a", "b", "c"]
    assert isinstance(st["under_replicated"], int)
    r = run_pacsgrid(["grid", "status", "--config", str(g.dir / "a.toml"), "--json"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["site"] == "a"
    r = run_pacsgrid(["grid", "status", "--config", str(g.dir / "a.toml")])
    assert r.returncode == 0 and "under-replicated" in r.stdout, r.stdout
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[2:] if line.strip()}
    assert sorted(rows) == ["a", "b", "c"], r.stdout
    assert "this site" in rows["a"], r.stdout
    for peer in ("b", "c"):
        # reachable, for how long, then feed head, lag and instances held as numbers
        cols = rows[peer].split()
        assert cols[1] == "reachable" and cols[3] == "s", r.stdout
        assert all(c.isdigit() for c in cols[4:7]), r.stdout
