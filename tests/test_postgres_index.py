"""The index in PostgreSQL: real `pacsgrid serve` processes with `[storage] index = "postgres"`,
each in a schema of its own in one test database (tests/pgserver.py: the server scripts/test.sh
started, or a throwaway one started here), driven by dcmtk and pynetdicom.

What is acknowledged must be found (C-FIND at every level asked) and come back byte for byte
(C-GET), after a restart and after a `kill -9`; the rows must really be in PostgreSQL, not in a
SQLite file beside them. A database that cannot be reached stops the start with a message that
names it without its password; `pacsgrid check --config` says the same."""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pydicom
import pytest

import pgserver
from test_grid import Grid, expected, getscu_study
from test_s3_blobs import KEY as S3_KEY, SECRET as S3_SECRET, moto, objects, s3  # noqa: F401
from harness import (HOST, SUCCESS, Corpus, Node, NodeDied, assert_identical, association, c_get,
                     dcmtk, echo, find, free_ports, gen_dataset, hexs,
                     run_pacsgrid, store, store_contexts, toml_str, wait_for)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pg():
    with pgserver.server() as server:
        yield server


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """Two patients, two studies each, two series of three MR images; explicit VR only, so
    dcmtk storescu sends and getscu receives every data set unchanged."""
    return gen_dataset(tmp_path_factory.mktemp("pgcorpus"), "--patients", "2", "--studies", "2",
                       "--series", "2", "--instances", "3", "--modality-mix", "MR=1",
                       "--ts-mix", "explicit=1", "--latin1-fraction", "0", "--seed", "71",
                       "--pid-prefix", "PGI")


def storage_section(url: str, schema: str, password_file: Path | None = None) -> str:
    lines = ["", "[storage]", 'index = "postgres"', "", "[storage.postgres]",
             f"url = {toml_str(url)}", f"schema = {toml_str(schema)}"]
    if password_file is not None:
        lines.append(f"password_file = {toml_str(password_file)}")
    return "\n".join(lines) + "\n"


def pg_node(node_factory, url: str, schema: str) -> Node:
    """A node (not started) whose index is `schema` in the database of `url`."""
    node = node_factory(start=False)
    node.config_path.write_text(node.config_path.read_text() + storage_section(url, schema))
    return node


def storescu(node: Node, paths) -> None:
    r = dcmtk("storescu", "-aet", "STORESCU", "-aec", node.ae_title, HOST, node.dicom_port,
              *paths, timeout=300)
    assert r.returncode == 0, f"storescu exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


def findscu(node: Node, tmp: Path, level: str, keys: dict, want: str) -> list[str]:
    """dcmtk findscu (Study Root): the `want` value of every response, repeats kept."""
    tmp.mkdir(parents=True, exist_ok=True)
    for old in tmp.glob("rsp*.dcm"):
        old.unlink()
    args = ["-S", "-aet", "FINDSCU", "-aec", node.ae_title, "-X", "-od", tmp,
            "-k", f"QueryRetrieveLevel={level}", "-k", f"{want}="]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}"]
    r = dcmtk("findscu", *args, HOST, node.dicom_port, timeout=60)
    assert r.returncode == 0, f"findscu exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return sorted(str(pydicom.dcmread(p).get(want, "")) for p in tmp.glob("rsp*.dcm"))


def assert_answers(node: Node, corpus: Corpus, tmp: Path, what: str) -> None:
    """C-FIND at STUDY and SERIES level gives exactly the corpus's studies and series (each
    once), with dcmtk findscu and pynetdicom; C-GET of each study gives the bytes sent."""
    studies = corpus.studies()
    got = findscu(node, tmp / "find", "STUDY", {}, "StudyInstanceUID")
    assert got == sorted(studies), f"{what}: findscu STUDY gave {got}"
    res = find(node, "STUDY", {"StudyInstanceUID": "", "PatientID": ""})
    assert res.status == SUCCESS, hexs(res.status)
    assert sorted(res.values("StudyInstanceUID")) == sorted(studies), what
    for study_uid, insts in studies.items():
        want_series = sorted({i.series_uid for i in insts})
        got = findscu(node, tmp / "find", "SERIES", {"StudyInstanceUID": study_uid},
                      "SeriesInstanceUID")
        assert got == want_series, f"{what}: findscu SERIES of {study_uid} gave {got}"
        res = find(node, "SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "",
                                    "NumberOfSeriesRelatedInstances": ""})
        assert res.status == SUCCESS, hexs(res.status)
        assert sorted(res.values("SeriesInstanceUID")) == want_series, what
        counts = {str(d.SeriesInstanceUID): int(d.NumberOfSeriesRelatedInstances)
                  for d in res.identifiers}
        assert counts == {s: len(v) for s, v in corpus.series().items() if s in want_series}, \
            f"{what}: series instance counts {counts}"
    # every study's bytes, by dcmtk getscu and by pynetdicom
    for study_uid, insts in studies.items():
        got = getscu_study(node, tmp / "get" / study_uid, study_uid)
        assert_identical(expected(insts), got, f"{what}: getscu of {study_uid}")
        res = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
        assert res.status == SUCCESS, hexs(res.status)
        assert_identical(expected(insts), res.received, f"{what}: C-GET of {study_uid}")


def rows(pg, schema: str) -> set[str]:
    """The SOP Instance UIDs in the node's `instances` table in PostgreSQL."""
    return {r[0] for r in pg.query(f"SELECT sop_instance_uid FROM {schema}.instances")}


def assert_no_sqlite(node: Node) -> None:
    strays = sorted(p.name for p in node.data_dir.glob("index.sqlite*"))
    assert not strays, f"the node made a SQLite index beside PostgreSQL: {strays}"


# ------------------------------------------------------------------------------ scenarios
def test_store_find_get_restart_with_the_index_in_postgres(node_factory, pg, corpus, tmp_path):
    schema = pg.schema("store")
    node = pg_node(node_factory, pg.url, schema).start()
    assert pg.schema_exists(schema), "the node did not create its schema"
    log = node.log_text()
    assert "postgres" in log and schema in log, "the start does not say which index it uses"

    storescu(node, corpus.paths)
    assert_answers(node, corpus, tmp_path, "after storescu")
    # the rows are in PostgreSQL, and only there
    assert rows(pg, schema) == set(corpus.by_uid), "instances in PostgreSQL"
    assert pg.query(f"SELECT count(*) FROM {schema}.studies") == [[str(len(corpus.studies()))]]
    assert_no_sqlite(node)

    node.restart()
    assert_answers(node, corpus, tmp_path, "after a restart")
    assert rows(pg, schema) == set(corpus.by_uid)
    assert_no_sqlite(node)

    # the same node's check: reachable, schema ready, index and blobs agree
    node.stop()
    r = run_pacsgrid(["check", "--config", node.config_path])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: index in PostgreSQL" in r.stdout and schema in r.stdout, r.stdout
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["instances"] == report["blobs"] == len(corpus.instances), report
    assert report["orphan_blobs"] == report["missing_blobs"] == report["corrupt_blobs"] == 0


def test_two_nodes_in_one_database_keep_apart(node_factory, pg, corpus, tmp_path):
    """Each node has its own schema: what one stores, the other does not see."""
    a = pg_node(node_factory, pg.url, pg.schema("apart")).start()
    b = pg_node(node_factory, pg.url, pg.schema("apart")).start()
    first = next(iter(corpus.studies().values()))
    storescu(a, [i.path for i in first])
    assert find(a, "STUDY", {"StudyInstanceUID": ""}).uids("StudyInstanceUID") == \
        {first[0].study_uid}
    assert find(b, "STUDY", {"StudyInstanceUID": ""}).uids("StudyInstanceUID") == set()


def test_kill9_right_after_stores_loses_nothing_acknowledged(node_factory, pg, corpus, tmp_path):
    schema = pg.schema("kill")
    node = pg_node(node_factory, pg.url, schema).start()
    statuses = store(node, corpus.paths)
    acknowledged = {p for p, s in statuses.items() if s == SUCCESS}
    # no grace: the process dies the moment the last response is read
    node.kill9()
    assert len(acknowledged) == len(corpus.paths), \
        {str(p): hexs(s) for p, s in statuses.items() if s != SUCCESS}
    node.start()
    assert "reconciliation done" in node.log_text(), "the unclean stop was not noticed"
    assert_answers(node, corpus, tmp_path, "after kill -9")
    assert rows(pg, schema) == set(corpus.by_uid)
    assert_no_sqlite(node)


@pytest.fixture(scope="module")
def longer(tmp_path_factory) -> Corpus:
    """120 MR images in one study: long enough an ingest to be killed in the middle."""
    return gen_dataset(tmp_path_factory.mktemp("pglong"), "--patients", "1", "--studies", "1",
                       "--series", "2", "--instances", "60", "--modality-mix", "MR=1",
                       "--ts-mix", "explicit=1", "--latin1-fraction", "0", "--seed", "72",
                       "--pid-prefix", "PGK")


def test_kill9_during_stores_loses_nothing_acknowledged(node_factory, pg, longer, tmp_path):
    """The node is killed while an association is sending: every instance acknowledged before
    the kill is found and retrieved identical after the restart, and nothing is answered twice."""
    schema = pg.schema("kill")
    node = pg_node(node_factory, pg.url, schema).start()
    acked: list[str] = []
    lock = threading.Lock()
    errors: list[str] = []

    def send():
        try:
            pairs = {(i.sop_class, i.ts) for i in longer.instances}
            with association(node, store_contexts(pairs)) as assoc:
                for inst in longer.instances:
                    if not assoc.is_established:
                        return
                    rsp = assoc.send_c_store(inst.path)
                    if rsp is not None and "Status" in rsp and int(rsp.Status) == SUCCESS:
                        with lock:
                            acked.append(inst.sop_uid)
        except Exception as e:  # the kill cuts the association: expected
            errors.append(repr(e))

    t = threading.Thread(target=send, daemon=True)
    t.start()
    assert wait_for(lambda: len(acked) >= 20, 60), f"ingest stalled: {len(acked)}, {errors}"
    with lock:
        node.kill9()
        before = set(acked)
    # the sender may sit on its dead association until pynetdicom's own timeouts: what it
    # heard before the kill was taken above, under the lock, so it need not be waited for
    t.join(timeout=5)
    assert len(before) < len(longer), "the kill came after the whole ingest; nothing was tested"
    node.start()
    study_uid = next(iter(longer.studies()))
    res = find(node, "IMAGE", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "",
                               "SOPInstanceUID": ""})
    assert res.status == SUCCESS, hexs(res.status)
    found = res.uids("SOPInstanceUID")
    lost = before - found
    assert not lost, f"{len(lost)} acknowledged instances lost, e.g. {sorted(lost)[:3]}"
    assert rows(pg, schema) == found, "C-FIND and the rows in PostgreSQL disagree"
    got = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
    assert got.status == SUCCESS, hexs(got.status)
    assert_identical(expected(i for i in longer.instances if i.sop_uid in found), got.received,
                     "C-GET after kill -9 during stores")


def test_unreachable_database_stops_the_start_without_showing_the_password(
        node_factory, tmp_path):
    """Needs no server: a loopback port nothing listens on."""
    port = free_ports(1)[0]
    secret = "pw-Sekr1t-9f3a"
    url = f"postgres://pacsgrid:{secret}@127.0.0.1:{port}/pacsgrid_test"
    shown = f"postgres://pacsgrid:***@127.0.0.1:{port}/pacsgrid_test"
    node = pg_node(node_factory, url, "site_x")
    started = time.monotonic()
    with pytest.raises(NodeDied):
        node.start(timeout=90)
    assert time.monotonic() - started < 60, "the start did not fail fast"
    assert node.proc.returncode != 0
    log = node.log_text()
    assert secret not in log, "the password is in the log"
    assert shown in log, f"the log does not name the database:\n{node.log_tail(20)}"
    assert not node.running()

    r = run_pacsgrid(["check", "--config", node.config_path], timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert secret not in out, "check printed the password"
    assert shown in r.stderr and "storage.postgres" in r.stderr, r.stderr
    # the cause, as the driver reports it (nothing listens there)
    for text in (log, r.stderr):
        assert "unreachable" in text.lower() or "refused" in text.lower(), text[-2000:]


def test_bad_postgres_settings_are_refused_by_name(tmp_path):
    """Needs no server: what validation refuses, serve and check refuse with the key."""
    cfg = tmp_path / "n.toml"
    cases = [
        ('[storage]\nindex = "postgres"\n', "[storage.postgres]"),
        ('[storage.postgres]\nurl = "postgres://127.0.0.1/x"\n', "storage.index"),
        ('[storage]\nindex = "postgres"\n[storage.postgres]\nurl = "mysql://u:pw-X1@h/x"\n',
         "storage.postgres.url"),
        ('[storage]\nindex = "postgres"\n[storage.postgres]\nurl = "postgres://h/x"\n'
         'schema = "Site-A"\n', "storage.postgres.schema"),
        ('[storage]\nindex = "postgres"\n[storage.postgres]\nurl = "postgres://h/x"\n'
         'password = "inline"\n', "password"),
        ('[storage]\nindex = "mariadb"\n', "index"),
    ]
    for text, needle in cases:
        cfg.write_text(text)
        r = run_pacsgrid(["check", "--config", cfg])
        assert r.returncode != 0 and needle in r.stderr, f"{text}: {r.stderr}"
        assert "pw-X1" not in r.stdout + r.stderr
        r = run_pacsgrid(["serve", "--config", cfg, "--data", tmp_path / "data",
                          "--dicom-port", str(free_ports(1)[0]),
                          "--http-port", str(free_ports(1)[0])], timeout=60)
        assert r.returncode != 0 and needle in r.stderr, f"serve with {text}: {r.stderr}"


def test_grid_with_one_site_on_postgres(tmp_path, pg):
    """Site a keeps its index in PostgreSQL, b in SQLite: what a stores is found and retrieved
    identical at b, and what b stores is found and retrieved at a."""
    at_a = gen_dataset(tmp_path / "ca", "--patients", "1", "--studies", "2", "--series", "2",
                       "--instances", "2", "--modality-mix", "MR=1", "--ts-mix", "explicit=1",
                       "--latin1-fraction", "0", "--pid-prefix", "PGA", "--seed", "73")
    at_b = gen_dataset(tmp_path / "cb", "--patients", "1", "--studies", "1", "--series", "1",
                       "--instances", "3", "--modality-mix", "MR=1", "--ts-mix", "explicit=1",
                       "--latin1-fraction", "0", "--pid-prefix", "PGB", "--seed", "74")
    schema = pg.schema("grid")
    grid = Grid(tmp_path, sites="a,b", copies=2)
    try:
        a = grid["a"]
        a.config_path.write_text(a.config_path.read_text() + storage_section(pg.url, schema))
        grid.start()
        storescu(a, at_a.paths)
        storescu(grid["b"], at_b.paths)
        grid.settle(len(at_a) + len(at_b))
        both = at_a + at_b
        for site in ("a", "b"):
            node = grid[site]
            got = find(node, "STUDY", {"StudyInstanceUID": ""}).uids("StudyInstanceUID")
            assert got == set(both.studies()), f"C-FIND at {site}: {got}"
            for study_uid, insts in both.studies().items():
                res = find(node, "SERIES", {"StudyInstanceUID": study_uid,
                                            "SeriesInstanceUID": ""})
                assert res.uids("SeriesInstanceUID") == {i.series_uid for i in insts}
        for study_uid, insts in at_a.studies().items():
            got = getscu_study(grid["b"], tmp_path / "get-b" / study_uid, study_uid)
            assert_identical(expected(insts), got, f"getscu at b of {study_uid} stored at a")
        for study_uid, insts in at_b.studies().items():
            got = getscu_study(a, tmp_path / "get-a" / study_uid, study_uid)
            assert_identical(expected(insts), got, f"getscu at a of {study_uid} stored at b")
        # a's index, both its own instances and b's, is in PostgreSQL
        assert rows(pg, schema) == set(both.by_uid)
        assert_no_sqlite(a)
    finally:
        grid.close()


def test_a_database_outage_refuses_stores_and_the_node_carries_on(node_factory, corpus, tmp_path):
    """The database server crashes under a running node: stores are refused with Out of
    Resources (A700, the sender may try again), nothing already stored is touched, the node
    keeps answering; once the server is back, the same stores succeed without a restart."""
    studies = list(corpus.studies().values())
    first, second = studies[0], studies[1]
    with pgserver.private_server() as pg:
        schema = pg.schema("outage")
        node = pg_node(node_factory, pg.url, schema).start()
        storescu(node, [i.path for i in first])

        pg.crash()
        statuses = store(node, [second[0].path])
        assert list(statuses.values()) == [0xA700], {str(p): hexs(s) for p, s in statuses.items()}
        assert echo(node) == SUCCESS, "the node stopped answering"
        assert "index database unreachable" in node.log_text()

        pg.start()
        storescu(node, [i.path for i in second])
        both = first + second
        got = find(node, "STUDY", {"StudyInstanceUID": ""}).uids("StudyInstanceUID")
        assert got == {first[0].study_uid, second[0].study_uid}
        for study_uid in got:
            insts = [i for i in both if i.study_uid == study_uid]
            res = getscu_study(node, tmp_path / "get" / study_uid, study_uid)
            assert_identical(expected(insts), res, f"getscu of {study_uid} after the outage")
        assert rows(pg, schema) == {i.sop_uid for i in both}
        node.stop()


def test_node_processes_of_one_site_share_postgres_and_s3(node_factory, pg, moto, corpus,
                                                          tmp_path):
    """DESIGN.md, "Scale": several node processes of one site share one PostgreSQL schema and
    one bucket prefix. What either stores, both find and retrieve identical; a third process
    started on an empty data directory serves all of it, nothing read from local disk."""
    schema = pg.schema("scale")
    s3(moto).create_bucket(Bucket="scale-out")

    def process() -> Node:
        node = node_factory(start=False)
        secret = node.dir / "s3.secret"
        secret.write_text(S3_SECRET + "\n")
        node.config_path.write_text(node.config_path.read_text() + "\n".join([
            "", "[storage]", 'index = "postgres"', 'blobs = "s3"', "",
            "[storage.postgres]", f"url = {toml_str(pg.url)}", f"schema = {toml_str(schema)}",
            "", "[storage.s3]", 'bucket = "scale-out"', 'prefix = "site"',
            f"endpoint = {toml_str(moto)}", 'region = "us-east-1"', "allow_http = true",
            f"access_key_id = {toml_str(S3_KEY)}", f"secret_access_key_file = {toml_str(secret)}",
            ""]))
        return node

    one, two = process().start(), process().start()
    studies = list(corpus.studies().values())
    half = len(studies) // 2
    storescu(one, [i.path for s in studies[:half] for i in s])
    storescu(two, [i.path for s in studies[half:] for i in s])
    assert_answers(one, corpus, tmp_path / "one", "at the first process")
    assert_answers(two, corpus, tmp_path / "two", "at the second process")
    assert rows(pg, schema) == set(corpus.by_uid)
    assert len(objects(moto, "scale-out", "site")) == len(corpus.instances)

    one.stop()
    two.stop()
    fresh = process().start()
    assert not list((fresh.data_dir / "blobs").glob("**/*")), "the new process has local blobs"
    assert_answers(fresh, corpus, tmp_path / "fresh", "at a process on an empty data dir")


def test_a_sqlite_node_moves_its_index_to_postgres_with_check_reindex(node_factory, pg, corpus,
                                                                      tmp_path):
    """A site outgrowing SQLite: stop the node, point its config at PostgreSQL, run
    `pacsgrid check --config FILE --reindex`, start it again. Every instance is indexed again
    from its own bytes and answers C-FIND and C-GET as before."""
    node = node_factory()
    storescu(node, corpus.paths)
    node.stop()

    schema = pg.schema("moved")
    node.config_path.write_text(node.config_path.read_text() + storage_section(pg.url, schema))
    r = run_pacsgrid(["check", "--config", node.config_path, "--data", node.data_dir,
                      "--reindex"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok: {len(corpus.instances)} blobs the index did not know are indexed" in r.stdout, \
        r.stdout
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["instances"] == report["blobs"] == len(corpus.instances), report
    assert rows(pg, schema) == set(corpus.by_uid)

    node.start()
    assert_answers(node, corpus, tmp_path, "after moving the index to PostgreSQL")
    # a second run finds nothing more to index
    node.stop()
    r = run_pacsgrid(["check", "--config", node.config_path, "--data", node.data_dir,
                      "--reindex", "--quick"])
    assert r.returncode == 0 and "ok: 0 blobs" in r.stdout, r.stdout + r.stderr


def test_grid_init_postgres_puts_every_site_index_in_its_own_schema(tmp_path, pg):
    """`pacsgrid grid init --postgres URL`: every site's config keeps its index in that
    database, in schema site_<name>; the grid works as with SQLite (stored at a, found and
    retrieved identical at b and c) and each site's rows are in its own schema."""
    db = f"grid_{uuid.uuid4().hex[:10]}"
    pg.query(f"CREATE DATABASE {db}")
    url = pg.url.rsplit("/", 1)[0] + "/" + db
    corpus = gen_dataset(tmp_path / "c", "--patients", "1", "--studies", "2", "--series", "1",
                         "--instances", "3", "--modality-mix", "MR=1", "--ts-mix", "explicit=1",
                         "--latin1-fraction", "0", "--pid-prefix", "PGG", "--seed", "75")
    grid = Grid(tmp_path, sites="a,b,c", copies=2, init_args=["--postgres", url])
    try:
        for site in ("a", "b", "c"):
            text = grid[site].config_path.read_text()
            assert 'index = "postgres"' in text and f'schema = "site_{site}"' in text, text
        grid.start()
        storescu(grid["a"], corpus.paths)
        grid.settle(len(corpus))
        for site in ("b", "c"):
            got = find(grid[site], "STUDY", {"StudyInstanceUID": ""}).uids("StudyInstanceUID")
            assert got == set(corpus.studies()), f"C-FIND at {site}: {got}"
            for study_uid, insts in corpus.studies().items():
                res = getscu_study(grid[site], tmp_path / site / study_uid, study_uid)
                assert_identical(expected(insts), res, f"getscu at {site} of {study_uid}")
        in_db = pg_at(pg, url)
        for site in ("a", "b", "c"):
            assert rows(in_db, f"site_{site}") == set(corpus.by_uid), site
            assert_no_sqlite(grid[site])
    finally:
        grid.close()
        pg.query(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def pg_at(pg, url: str) -> pgserver.PgServer:
    """The same server as `pg`, speaking to another database."""
    return pgserver.PgServer(url, pg.psql)
