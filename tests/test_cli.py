"""The command line: import (local and --to), check, serve flags / env / config, HTTP endpoints."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import (SUCCESS, assert_identical, c_get, clean_env, dcmtk, echo, free_ports,
                     http_get, instance_uids, pacsgrid_bin, part10, run_pacsgrid, store_ok)

# `stored N, duplicates N, rejected N`; further counters between the last two are tolerated
# (the node prints `stored N, duplicates N, quarantined N, rejected N`).
SUMMARY = re.compile(r"stored (\d+), duplicates (\d+),(?: [a-z_ ]+ \d+,)* rejected (\d+)")


def summary(r: subprocess.CompletedProcess) -> tuple[int, int, int]:
    m = SUMMARY.search(r.stdout)
    assert m, (f"no 'stored N, duplicates N, rejected N' line on stdout (exit {r.returncode})\n"
               f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")
    return tuple(int(x) for x in m.groups())


def check_json(r: subprocess.CompletedProcess) -> dict:
    out = r.stdout
    try:
        return json.loads(out[out.index("{"):out.rindex("}") + 1])
    except ValueError as e:
        raise AssertionError(f"`pacsgrid check` printed no JSON summary ({e}); exit "
                             f"{r.returncode}\nstdout:\n{out}\nstderr:\n{r.stderr[-3000:]}")


def retrieve_all_identical(node, corpus):
    for study_uid, insts in corpus.studies().items():
        got = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
        assert got.status == SUCCESS
        assert_identical({i.sop_uid: i.data for i in insts}, got.received, f"study {study_uid}")


# --------------------------------------------------------------------------- import
def test_import_into_data_dir_then_serve(node_factory, corpora):
    corpus = corpora.mixed
    node = node_factory(start=False)
    r = run_pacsgrid(["import", "--data", node.data_dir, *corpus.top_dirs()])
    assert summary(r) == (len(corpus), 0, 0), r.stdout
    assert r.returncode == 0, r.stderr[-3000:]

    again = run_pacsgrid(["import", "--data", node.data_dir, *corpus.top_dirs()])
    assert summary(again) == (0, len(corpus), 0), again.stdout
    assert again.returncode == 0

    # each import left one "import" audit record per study, naming the folders
    audit = run_pacsgrid(["audit", "search", "--data", node.data_dir, "--json"])
    records = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [r["event"] for r in records] == ["import"] * (2 * len(corpus.studies()))
    assert {r["study_uids"][0] for r in records} == set(corpus.studies())

    chk = run_pacsgrid(["check", "--data", node.data_dir])
    js = check_json(chk)
    assert chk.returncode == 0, f"check failed on a fresh import: {js}\n{chk.stderr[-2000:]}"
    assert js["instances"] == len(corpus) and js["blobs"] >= len(corpus), js

    node.start()
    assert sorted(instance_uids(node)) == sorted(corpus.by_uid)
    retrieve_all_identical(node, corpus)


def test_import_of_a_cd_folder_skips_what_is_not_an_instance(node_factory, corpora, tmp_path):
    """A folder copied from a patient CD: images under IMAGES/ (no extension), a DICOMDIR and
    an autorun file. The images are stored; the others are listed as skipped, and the import
    succeeds."""
    from pydicom.data import get_testdata_file
    cd = tmp_path / "cd"
    (cd / "IMAGES").mkdir(parents=True)
    insts = corpora.native.instances[:3]
    for n, i in enumerate(insts):
        shutil.copy(i.path, cd / "IMAGES" / f"IM{n:06d}")
    shutil.copy(get_testdata_file("DICOMDIR", read=False) or "", cd / "DICOMDIR")
    (cd / "AUTORUN.INF").write_text("[autorun]\nopen=viewer.exe\n")
    (cd / "README.TXT").write_text("x" * 400)
    node = node_factory(start=False)
    r = run_pacsgrid(["import", "--data", node.data_dir, cd])
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert summary(r) == (3, 0, 0), r.stdout
    skipped = sorted(line.split(":")[0] for line in r.stdout.splitlines()
                     if line.startswith("skipped "))
    assert skipped == [f"skipped {cd / n}" for n in ("AUTORUN.INF", "DICOMDIR", "README.TXT")]
    assert "skipped 3," in r.stdout
    node.start()
    assert sorted(instance_uids(node)) == sorted(i.sop_uid for i in insts)


def test_import_with_node_config_records_its_site_and_issuer(node_factory, corpora):
    corpus = corpora.issuers  # includes a patient without IssuerOfPatientID
    node = node_factory(start=False, site="site-imp", default_issuer="HOSP_IMP")
    r = run_pacsgrid(["import", "--config", node.config_path, *corpus.top_dirs()])
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary(r) == (len(corpus), 0, 0), r.stdout
    node.start()
    no_issuer = [i for i in corpus.instances if i.patient_id.startswith("NOISS")][0]
    status, _, body = http_get(node.http_port, f"/api/v1/instances/{no_issuer.sop_uid}")
    assert status == 200, body
    inst = json.loads(body)
    text = json.dumps(inst)
    # The REST view names origin site and issuer; both come from the node's config file.
    assert "site-imp" in text, inst
    status, _, body = http_get(node.http_port, "/api/v1/patients/HOSP_IMP/" + no_issuer.patient_id)
    assert status == 200, f"patient not under the config's default issuer: {body[:500]}"


def test_import_reports_each_rejected_file(tmp_path, corpora):
    inst = corpora.native.instances[0]
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(inst.path, src / "good.dcm")
    (src / "sub" / "garbage.dcm").write_bytes(random.Random(1).randbytes(3000))
    data = inst.data
    (src / "sub" / "truncated.dcm").write_bytes(
        part10(inst.sop_class, inst.sop_uid[:-1] + "7", inst.ts, data[:len(data) // 2]))
    (src / "notes.txt").write_text("not DICOM at all\n")
    r = run_pacsgrid(["import", "--data", tmp_path / "data", src])
    # a .dcm file is offered and refused when it is not DICOM; other non-DICOM files are
    # skipped, also with their reason (test_import_of_a_cd_folder_skips...)
    assert summary(r) == (1, 0, 2), r.stdout
    assert "skipped 1," in r.stdout and "skipped " + str(src / "notes.txt") in r.stdout
    assert r.returncode == 1, f"exit {r.returncode} with rejected files"
    out = r.stdout + r.stderr
    for bad in ("garbage.dcm", "truncated.dcm", "notes.txt"):
        line = next((l for l in out.splitlines() if bad in l), None)
        assert line, f"rejected file {bad} not named in the output:\n{out[-3000:]}"
        assert len(line.strip()) > len(str(src / bad)) + 3, f"no reason given: {line!r}"
    assert "good.dcm" not in "\n".join(l for l in out.splitlines() if "reject" in l.lower())


def test_import_to_running_node(node_factory, corpora):
    corpus = corpora.mixed
    node = node_factory(allowed_calling_aes=["IMPORTER", "PYTEST"])
    r = run_pacsgrid(["import", "--to", node.address, "--calling-ae", "IMPORTER",
                      *corpus.top_dirs()])
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert summary(r) == (len(corpus), 0, 0)
    assert sorted(instance_uids(node)) == sorted(corpus.by_uid)
    retrieve_all_identical(node, corpus)

    again = run_pacsgrid(["import", "--to", node.address, "--calling-ae", "IMPORTER",
                          *corpus.top_dirs()])
    assert again.returncode == 0
    stored, dups, rejected = summary(again)
    assert stored + dups == len(corpus) and rejected == 0
    assert sorted(instance_uids(node)) == sorted(corpus.by_uid)


def test_import_to_refused_calling_ae_fails(node_factory, corpora):
    node = node_factory(allowed_calling_aes=["IMPORTER"])
    r = run_pacsgrid(["import", "--to", node.address, "--calling-ae", "STRANGER",
                      *corpora.native.top_dirs()], timeout=120)
    assert r.returncode != 0, f"import to a node that refuses us exited 0:\n{r.stdout}"
    assert (r.stdout + r.stderr).strip(), "no message at all"
    assert instance_uids_as(node, "IMPORTER") == []


def instance_uids_as(node, ae):
    from harness import find
    res = find(node, "STUDY", {"StudyInstanceUID": ""}, ae_title=ae)
    assert res.status == SUCCESS
    return [d.StudyInstanceUID for d in res.identifiers]


# --------------------------------------------------------------------------- check
def blob_of(data_dir: Path, inst) -> Path:
    """The file in the data dir that holds the instance (its content ends with the data set)."""
    tail = inst.data
    for d, _, files in os.walk(data_dir):
        for f in files:
            p = Path(d) / f
            if p.stat().st_size >= len(tail):
                with open(p, "rb") as fp:
                    fp.seek(-len(tail), 2)
                    if fp.read() == tail:
                        return p
    raise AssertionError(f"no file in {data_dir} holds the bytes of {inst.sop_uid}")


@pytest.mark.parametrize("damage", ["corrupt", "missing", "orphan"])
def test_check_finds_damage(tmp_path, corpora, damage):
    corpus = corpora.native
    data = tmp_path / "data"
    r = run_pacsgrid(["import", "--data", data, *corpus.top_dirs()])
    assert r.returncode == 0, r.stdout + r.stderr
    ok = run_pacsgrid(["check", "--data", data])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    blob = blob_of(data, corpus.instances[2])
    expected = {"orphan_blobs": 0, "missing_blobs": 0, "corrupt_blobs": 0,
                "instances": len(corpus)}
    if damage == "corrupt":
        b = bytearray(blob.read_bytes())
        b[-100] ^= 0x01
        blob.write_bytes(bytes(b))
        expected["corrupt_blobs"] = 1
    elif damage == "missing":
        blob.unlink()
        expected["missing_blobs"] = 1
    else:
        name = blob.name
        hexdigits = "0123456789abcdef"
        new = name[:4] + "".join(random.choice(hexdigits) for _ in range(len(name) - 4)) \
            if all(c in hexdigits for c in name) else name + ".stray"
        (blob.parent / new).write_bytes(b"stray bytes that no index row names")
        expected["orphan_blobs"] = 1
    bad = run_pacsgrid(["check", "--data", data])
    js = check_json(bad)
    assert bad.returncode != 0, f"check exited 0 with a {damage} blob: {js}"
    assert {k: js.get(k) for k in expected} == expected, js


# --------------------------------------------------------------------------- serve
BAD_CONFIGS = {
    "unknown-key-in-dicom": ('[dicom]\nae_title = "PACSGRID"\ncolour = "blue"\n', "colour"),
    "unknown-section": ('[frobnicate]\nx = 1\n', "frobnicate"),
    "unknown-key-in-node": ('[node]\nsiet = "a"\n', "siet"),
    "unknown-key-in-remote-ae": ('[[remote_ae]]\nae_title = "X"\nhost = "127.0.0.1"\n'
                                 'port = 104\ntls = true\n', "tls"),
    "wrong-type": ('[dicom]\nport = "eleven"\n', "port"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_refused_with_a_clear_message(tmp_path, case):
    text, word = BAD_CONFIGS[case]
    dicom_port, http_port = free_ports(2)
    cfg = tmp_path / "bad.toml"
    # ports given on the command line so that a node that accepts the file does not clash
    cfg.write_text(text)
    proc = subprocess.Popen(
        [str(pacsgrid_bin()), "serve", "--config", str(cfg), "--data", str(tmp_path / "d"),
         "--dicom-port", str(dicom_port), "--http-port", str(http_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{case}: the node started with a bad config:\n{err[-2000:]}")
    assert proc.returncode != 0
    assert word in (out + err), f"{case}: message does not name {word!r}:\n{err[-2000:]}"


def serve_checks(node, ae_title):
    assert http_get(node.http_port, "/healthz")[0] == 200
    r = dcmtk("echoscu", "-aec", ae_title, "127.0.0.1", node.dicom_port, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_serve_command_line_flags(node_factory, corpora):
    node = node_factory(start=False)
    data = node.dir / "flagdata"
    node.start(argv=["serve", "--data", data, "--ae-title", "FLAGAE", "--dicom-port",
                     node.dicom_port, "--http-port", node.http_port, "--site", "flagsite"])
    node.ae_title = "FLAGAE"
    serve_checks(node, "FLAGAE")
    store_ok(node, corpora.native.instances[:2])
    assert data.is_dir() and any(data.iterdir()), "--data directory not used"


def test_serve_environment_variables(node_factory, corpora):
    node = node_factory(start=False)
    data = node.dir / "envdata"
    node.start(argv=["serve"], env={"PACSGRID_DATA": str(data), "PACSGRID_AE_TITLE": "ENVAE",
                                    "PACSGRID_DICOM_PORT": str(node.dicom_port),
                                    "PACSGRID_HTTP_PORT": str(node.http_port)})
    node.ae_title = "ENVAE"
    serve_checks(node, "ENVAE")
    store_ok(node, corpora.native.instances[:2])
    assert data.is_dir() and any(data.iterdir()), "PACSGRID_DATA not used"


def test_serve_config_from_environment(node_factory):
    node = node_factory(start=False)
    node.start(argv=["serve"], env={"PACSGRID_CONFIG": str(node.config_path)})
    serve_checks(node, node.ae_title)
    assert node.data_dir.is_dir()


def test_serve_defaults(tmp_path):
    """No flags: data in ./pacsgrid-data, AE PACSGRID, DICOM 11112, HTTP 8080 (if those ports
    are free on this machine)."""
    import socket
    for port in (11112, 8080):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                pytest.fail(f"port {port} is busy on this machine: cannot test the defaults")
    proc = subprocess.Popen([str(pacsgrid_bin()), "serve"], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http_get(8080, "/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("no /healthz on 8080")
        r = dcmtk("echoscu", "-aec", "PACSGRID", "127.0.0.1", 11112, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (tmp_path / "pacsgrid-data").is_dir()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_graceful_stop_on_sigterm(node):
    assert echo(node) == SUCCESS
    code = node.stop(grace=15)
    assert code == 0, f"exit code {code} after SIGTERM"


# --------------------------------------------------------------------------- HTTP
def metric_samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("pacsgrid") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def test_healthz_and_metrics(node, corpora):
    status, _, body = http_get(node.http_port, "/healthz")
    assert status == 200
    status, headers, body = http_get(node.http_port, "/metrics")
    assert status == 200
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert ctype.startswith("text/plain") or "openmetrics" in ctype, ctype
    text = body.decode()
    assert re.search(r"^# TYPE pacsgrid_\w+ counter", text, re.M), text[:2000]
    before = metric_samples(text)
    disk = os.statvfs(node.data_dir)
    assert before["pacsgrid_blob_disk_total_bytes"] == disk.f_blocks * disk.f_frsize
    assert 0 < before["pacsgrid_blob_disk_available_bytes"] <= disk.f_blocks * disk.f_frsize

    n = 3
    store_ok(node, corpora.native.instances[:n])
    after = metric_samples(http_get(node.http_port, "/metrics")[2].decode())
    grown = {k: after[k] - before.get(k, 0) for k in after
             if "stor" in k.lower() and after[k] - before.get(k, 0) >= n}
    assert grown, ("no pacsgrid store counter grew by 3 after 3 C-STOREs:\n" +
                   "\n".join(f"{k} {v}" for k, v in after.items() if "stor" in k.lower()))
    assert http_get(node.http_port, "/no-such-page")[0] == 404


def test_cors_for_browser_viewers(node_factory):
    import requests
    origin = "http://viewer.example:3000"
    node = node_factory(start=False)
    # [http] is the last table of the generated config when no remote AE is listed.
    with open(node.config_path, "a") as f:
        f.write(f'cors_allow_origins = ["{origin}"]\n')
    node.start()
    base = f"http://127.0.0.1:{node.http_port}"
    pre = requests.options(f"{base}/dicom-web/studies", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "accept"})
    assert pre.status_code == 200, pre.text
    assert pre.headers.get("Access-Control-Allow-Origin") == origin, dict(pre.headers)
    got = requests.get(f"{base}/dicom-web/studies", headers={"Origin": origin}, timeout=10)
    assert got.headers.get("Access-Control-Allow-Origin") == origin, dict(got.headers)
    other = requests.get(f"{base}/dicom-web/studies", headers={"Origin": "http://evil.example"},
                         timeout=10)
    assert "Access-Control-Allow-Origin" not in other.headers, dict(other.headers)


def test_no_cors_headers_by_default(node):
    import requests
    got = requests.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies",
                       headers={"Origin": "http://viewer.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in got.headers, dict(got.headers)
