#!/usr/bin/env python3
"""Helpers for bench/grid.sh: the parts of the grid benchmark that need DICOM from Python or
JSON polling with sub-second timing. Each subcommand prints one JSON object on stdout (or writes
it to --out) and logs progress on stderr.

  free-base --sites N                 a base port whose `grid init` port block is free
  visibility --corpus DIR --store AE@HOST:PORT --find AE@HOST:PORT [--count N] [--poll-ms MS]
                                      C-STORE one instance at a time at one site, C-FIND it at
                                      another until found; per-instance delays, p50/p99
  wait-grid --url BASE... --instances N --since-ms T [--timeout S]
                                      poll GET /api/v1/grid every 100 ms until every URL says
                                      under_replicated == 0, lag 0 everywhere, N instances,
                                      counted after T
  holders --url BASE --corpus DIR     holders of every corpus instance, per study
  compare --orig DIR --got DIR        received files against the originals, dataset bytes
"""
import argparse
import json
import os
import socket
import sys
import time
import urllib.request


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] grid_bench: {msg}", file=sys.stderr, flush=True)


def emit(obj, out):
    text = json.dumps(obj, indent=2, sort_keys=True)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    print(text)


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    v = sorted(values)
    k = max(1, int(-(-q * len(v) // 100)))  # ceil(q/100 * n), at least 1
    return v[min(k, len(v)) - 1]


def parse_ae(spec):
    """AE@HOST:PORT -> (AE, HOST, PORT)."""
    ae, _, hp = spec.partition("@")
    host, _, port = hp.rpartition(":")
    return ae, host, int(port)


def corpus_files(corpus):
    """Paths of every .dcm file under corpus, sorted."""
    files = []
    for root, _dirs, names in os.walk(corpus):
        files.extend(os.path.join(root, n) for n in names if n.endswith(".dcm"))
    files.sort()
    return files


# ---------------------------------------------------------------------------------------------
def cmd_free_base(a):
    """A base port in [20000, 60000) such that base + 10*i + {0,1,2} is free for every site."""
    import random

    rnd = random.Random()
    for _ in range(200):
        base = rnd.randrange(20000, 60000 - 10 * a.sites, 10)
        ports = [base + 10 * i + j for i in range(a.sites) for j in range(3)]
        socks = []
        try:
            for p in ports:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                socks.append(s)
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        print(base)
        return 0
    log("no free port block found")
    return 1


# ---------------------------------------------------------------------------------------------
def cmd_visibility(a):
    from pydicom import dcmread
    from pynetdicom import AE, StoragePresentationContexts
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
    from pydicom.dataset import Dataset

    files = corpus_files(a.corpus)[: a.count]
    if len(files) < a.count:
        log(f"corpus has only {len(files)} instances, wanted {a.count}")
        return 1
    # UIDs read beforehand so nothing but the DICOM exchange sits inside the timed section.
    keys = []
    classes = set()
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        keys.append((f, ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
        classes.add(ds.SOPClassUID)

    s_ae, s_host, s_port = parse_ae(a.store)
    f_ae, f_host, f_port = parse_ae(a.find)
    ae = AE(ae_title=a.calling_ae)
    ae.maximum_pdu_size = 131072
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for c in classes:
        ae.add_requested_context(c)
    store = ae.associate(s_host, s_port, ae_title=s_ae, max_pdu=131072)
    if not store.is_established:
        log(f"association to {a.store} failed")
        return 1
    fae = AE(ae_title=a.calling_ae)
    fae.acse_timeout = fae.dimse_timeout = fae.network_timeout = 30
    fae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    find = fae.associate(f_host, f_port, ae_title=f_ae, max_pdu=131072)
    if not find.is_established:
        store.release()
        log(f"association to {a.find} failed")
        return 1

    def found(study, series, sop):
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study
        q.SeriesInstanceUID = series
        q.SOPInstanceUID = sop
        n = 0
        for status, ident in find.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
            if status is None:
                raise RuntimeError("C-FIND: no response (association aborted or timed out)")
            if status.Status in (0xFF00, 0xFF01) and ident is not None and ident.get("SOPInstanceUID") == sop:
                n += 1
            elif status.Status not in (0x0000, 0xFF00, 0xFF01):
                raise RuntimeError(f"C-FIND failed with status 0x{status.Status:04X}")
        return n > 0

    poll = a.poll_ms / 1000.0
    delays, polls, failures, timeouts = [], [], [], 0
    t_start = time.perf_counter()
    try:
        for i, (path, _cls, study, series, sop) in enumerate(keys):
            st = store.send_c_store(path)
            if st is None or "Status" not in st or st.Status != 0x0000:
                failures.append(sop)
                log(f"C-STORE of {path} failed: {st.Status if st is not None and 'Status' in st else 'no response'}")
                continue
            t0 = time.perf_counter()
            n = 0
            while True:
                tq = time.perf_counter()
                n += 1
                if found(study, series, sop):
                    delays.append(time.perf_counter() - t0)
                    polls.append(n)
                    break
                if tq - t0 > a.timeout:
                    timeouts += 1
                    log(f"{sop} not visible at {a.find} after {a.timeout} s")
                    break
                time.sleep(max(0.0, poll - (time.perf_counter() - tq)))
            if (i + 1) % 50 == 0:
                log(f"{i + 1}/{len(keys)} stored and found")
    finally:
        store.release()
        find.release()
    total = time.perf_counter() - t_start
    res = {
        "instances": len(keys),
        "stored_ok": len(keys) - len(failures),
        "found": len(delays),
        "timeouts": timeouts,
        "poll_ms": a.poll_ms,
        "run_s": round(total, 3),
    }
    if delays:
        ms = [d * 1000 for d in delays]
        res.update(
            {
                "p50_ms": round(percentile(ms, 50), 1),
                "p90_ms": round(percentile(ms, 90), 1),
                "p99_ms": round(percentile(ms, 99), 1),
                "min_ms": round(min(ms), 1),
                "max_ms": round(max(ms), 1),
                "mean_ms": round(sum(ms) / len(ms), 1),
                "mean_polls": round(sum(polls) / len(polls), 2),
                "delays_ms": [round(x, 1) for x in ms],
            }
        )
    emit(res, a.out)
    return 0 if res["found"] == len(keys) else 1


# ---------------------------------------------------------------------------------------------
def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def settled(st, n, since_ms):
    """Why a /api/v1/grid answer is not settled yet ("" when it is)."""
    down = [s["name"] for s in st.get("sites", []) if not s.get("reachable")]
    if down:
        return f"unreachable {down}"
    if st.get("counted_at_ms", 0) < since_ms:
        return "count older than the ingest end"
    if st.get("instances") != n:
        return f"instances {st.get('instances')} != {n}"
    if st.get("under_replicated") != 0:
        return f"under_replicated {st.get('under_replicated')}"
    lag = {s["name"]: s.get("lag") for s in st.get("sites", []) if s.get("lag")}
    if lag:
        return f"lag {lag}"
    return ""


def cmd_wait_grid(a):
    t0 = time.time()
    deadline = t0 + a.timeout
    last = {}
    why = {}
    # When each site last turned settled (seconds after --since-ms): which site the wait ends on.
    settled_at = {}
    while True:
        done = True
        for u in a.url:
            try:
                st = get_json(u.rstrip("/") + "/api/v1/grid")
            except Exception as e:  # the server is busy or restarting: keep polling
                why[u] = f"GET failed: {e}"
                done = False
                continue
            last[u] = st
            was = why.get(u)
            why[u] = settled(st, a.instances, a.since_ms)
            if not why[u] and was != "":
                settled_at[u] = round(time.time() - a.since_ms / 1000.0, 3)
            done = done and not why[u]
        now = time.time()
        if done:
            break
        if now > deadline:
            log(f"not settled after {a.timeout} s: {why}")
            emit({"settled": False, "why": why, "status": last}, a.out)
            return 1
        time.sleep(0.1)
    # Measured from --since-ms (wall clock of the ingest end, taken by the caller).
    res = {
        "settled": True,
        "seconds_since": round(now - a.since_ms / 1000.0, 3),
        "polled_s": round(now - t0, 3),
        "settled_at_s": settled_at,
        "status": last,
    }
    emit(res, a.out)
    return 0


# ---------------------------------------------------------------------------------------------
def cmd_holders(a):
    from pydicom import dcmread

    studies = {}
    for f in corpus_files(a.corpus):
        ds = dcmread(f, stop_before_pixels=True)
        sop = ds.SOPInstanceUID
        inst = get_json(f"{a.url.rstrip('/')}/api/v1/instances/{sop}")
        s = studies.setdefault(
            ds.StudyInstanceUID,
            {"study": ds.StudyInstanceUID, "patient": ds.PatientID, "instances": 0, "bytes": 0, "holders": {}},
        )
        s["instances"] += 1
        s["bytes"] += os.path.getsize(f)
        key = ",".join(sorted(inst.get("holders", [])))
        s["holders"][key] = s["holders"].get(key, 0) + 1
    emit({"studies": list(studies.values())}, a.out)
    return 0


# ---------------------------------------------------------------------------------------------
def split_part10(data):
    """(meta, dataset) bytes of a Part 10 file, split after the file meta group."""
    if data[128:132] != b"DICM":
        return b"", data
    # (0002,0000) UL group length, explicit VR LE, is the first element of the meta group.
    glen = int.from_bytes(data[140:144], "little")
    end = 144 + glen
    return data[:end], data[end:]


def cmd_compare(a):
    from pydicom import dcmread

    orig = {}
    for f in corpus_files(a.orig):
        ds = dcmread(f, stop_before_pixels=True)
        if a.study and ds.StudyInstanceUID != a.study:
            continue
        orig[ds.SOPInstanceUID] = f
    got = {}
    for root, _d, names in os.walk(a.got):
        for n in names:
            p = os.path.join(root, n)
            try:
                got[dcmread(p, stop_before_pixels=True).SOPInstanceUID] = p
            except Exception as e:
                log(f"{p}: not DICOM: {e}")
    same_file = same_ds = 0
    diff = []
    for sop, p in got.items():
        if sop not in orig:
            diff.append(f"{sop}: not in the originals")
            continue
        x = open(orig[sop], "rb").read()
        y = open(p, "rb").read()
        if x == y:
            same_file += 1
        if split_part10(x)[1] == split_part10(y)[1]:
            same_ds += 1
        else:
            diff.append(f"{sop}: dataset bytes differ ({p})")
    res = {
        "expected": len(orig),
        "received": len(got),
        "missing": len(set(orig) - set(got)),
        "identical_files": same_file,
        "identical_datasets": same_ds,
        "differences": diff[:20],
    }
    emit(res, a.out)
    return 0 if same_ds == len(orig) == len(got) else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("free-base")
    p.add_argument("--sites", type=int, default=3)
    p.set_defaults(fn=cmd_free_base)
    p = sub.add_parser("visibility")
    p.add_argument("--corpus", required=True)
    p.add_argument("--store", required=True, help="AE@HOST:PORT of the site to store at")
    p.add_argument("--find", required=True, help="AE@HOST:PORT of the site to query")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--poll-ms", type=float, default=20)
    p.add_argument("--timeout", type=float, default=30, help="seconds per instance")
    p.add_argument("--calling-ae", default="BENCHSCU")
    p.add_argument("--out")
    p.set_defaults(fn=cmd_visibility)
    p = sub.add_parser("wait-grid")
    p.add_argument("--url", action="append", required=True)
    p.add_argument("--instances", type=int, required=True)
    p.add_argument("--since-ms", type=int, required=True)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--out")
    p.set_defaults(fn=cmd_wait_grid)
    p = sub.add_parser("holders")
    p.add_argument("--url", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--out")
    p.set_defaults(fn=cmd_holders)
    p = sub.add_parser("compare")
    p.add_argument("--orig", required=True)
    p.add_argument("--got", required=True)
    p.add_argument("--study")
    p.add_argument("--out")
    p.set_defaults(fn=cmd_compare)
    a = ap.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
