"""Blobs in an S3 bucket: real `pacsgrid serve` processes with `[storage] blobs = "s3"` against
moto's S3 server (started here, on a free loopback port), with dcmtk and pynetdicom clients.

What is stored must come back byte for byte (C-GET, WADO-RS) from the bucket, survive a
restart and a `kill -9`, and a node whose bucket is missing must refuse to start."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests

from harness import (SUCCESS, Corpus, Node, NodeDied, assert_identical, c_get, dataset_bytes,
                     dcmtk, find, free_ports, gen_dataset, hexs, multipart_parts, run_pacsgrid,
                     store_ok, terminate, toml_str, wait_port)

KEY, SECRET = "pacsgrid-test-key", "pacsgrid-test-secret"


@pytest.fixture(scope="module")
def moto():
    """moto's S3 server on a free port of 127.0.0.1, for this module."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        terminate(proc)


def s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY,
                        aws_secret_access_key=SECRET, region_name="us-east-1")


def objects(endpoint: str, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix/`, key -> bytes."""
    c = s3(endpoint)
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            out[o["Key"]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def storage_section(endpoint: str, bucket: str, prefix: str, secret_file: Path) -> str:
    secret_file.write_text(SECRET + "\n")
    return "\n".join([
        "", "[storage]", 'blobs = "s3"', "", "[storage.s3]", f"bucket = {toml_str(bucket)}",
        f"prefix = {toml_str(prefix)}", f"endpoint = {toml_str(endpoint)}",
        'region = "us-east-1"', "allow_http = true", f"access_key_id = {toml_str(KEY)}",
        f"secret_access_key_file = {toml_str(secret_file)}", ""])


def s3_node(node_factory, endpoint: str, bucket: str, prefix: str = "blobs") -> Node:
    """A node (not started) whose blobs go to `bucket` under `prefix`."""
    node = node_factory(start=False)
    node.config_path.write_text(node.config_path.read_text() + storage_section(
        endpoint, bucket, prefix, node.dir / "s3.secret"))
    return node


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """One MR study plus one 12.5 MB CR image, which the node uploads as a multipart upload;
    explicit VR only, so dcmtk storescu sends each file's data set unchanged."""
    root = tmp_path_factory.mktemp("s3corpus")
    small = gen_dataset(root / "mr", "--patients", "1", "--studies", "1", "--series", "2",
                        "--instances", "3", "--modality-mix", "MR=1",
                        "--ts-mix", "explicit=1", "--latin1-fraction", "0",
                        "--seed", "61", "--pid-prefix", "S3A")
    big = gen_dataset(root / "cr", "--patients", "1", "--studies", "1", "--series", "1",
                      "--modality-mix", "CR=1", "--cr-images", "1", "--cr-size", "2500",
                      "--ts-mix", "explicit=1", "--latin1-fraction", "0", "--seed", "62",
                      "--pid-prefix", "S3B")
    assert max(p.stat().st_size for p in big.paths) > 12_000_000
    return small + big


def get_all(node: Node, corpus: Corpus) -> dict[str, bytes]:
    received = {}
    for study_uid in corpus.studies():
        res = c_get(node, "STUDY", {"StudyInstanceUID": study_uid})
        assert res.status == SUCCESS, hexs(res.status)
        received.update(res.received)
    return received


def wado_instance(node: Node, inst) -> bytes:
    rsp = requests.get(
        f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{inst.study_uid}/series/"
        f"{inst.series_uid}/instances/{inst.sop_uid}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=60)
    assert rsp.status_code == 200, rsp.text[:500]
    _, parts = multipart_parts(rsp)
    assert len(parts) == 1
    return parts[0][1]


def expected(corpus: Corpus) -> dict[str, bytes]:
    return {i.sop_uid: dataset_bytes(i.path) for i in corpus.instances}


def test_store_retrieve_restart_with_blobs_in_the_bucket(node_factory, moto, corpus):
    s3(moto).create_bucket(Bucket="site-a")
    node = s3_node(node_factory, moto, "site-a").start()
    r = dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.dicom_port,
              *corpus.paths, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    want = expected(corpus)
    assert_identical(want, get_all(node, corpus), "C-GET from S3")
    stored = objects(moto, "site-a", "blobs")
    assert len(stored) == len(corpus.instances), sorted(stored)
    for key in stored:
        assert key.split("/")[1] == key.split("/")[2][:2], f"fan-out of {key}"
    # WADO-RS gives the blob as stored, and that is the object in the bucket
    wado = {i.sop_uid: wado_instance(node, i) for i in corpus.instances}
    assert sorted(wado.values()) == sorted(stored.values())
    assert_identical(want, {u: dataset_bytes(b) for u, b in wado.items()}, "WADO-RS from S3")
    # nothing went to a local blob folder
    assert not (node.data_dir / "blobs").exists()

    node.restart()
    assert_identical(want, get_all(node, corpus), "C-GET from S3 after a restart")
    node.stop()
    r = run_pacsgrid(["check", "--config", node.config_path])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: blobs in s3://site-a/blobs" in r.stdout, r.stdout
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["instances"] == report["blobs"] == len(corpus.instances), report
    assert report["orphan_blobs"] == report["missing_blobs"] == report["corrupt_blobs"] == 0


def test_a_missing_bucket_stops_the_start_and_check_names_it(node_factory, moto):
    node = s3_node(node_factory, moto, "no-such-bucket-here")
    with pytest.raises(NodeDied):
        node.start(timeout=90)
    log = node.log_tail(40)
    assert "no-such-bucket-here" in log and "does not exist" in log, log
    assert moto in log, log
    r = run_pacsgrid(["check", "--config", node.config_path])
    assert r.returncode != 0
    assert "no-such-bucket-here" in r.stderr and "does not exist" in r.stderr, r.stderr


def test_check_refuses_an_s3_config_without_its_bucket_section(tmp_path):
    cfg = tmp_path / "n.toml"
    cfg.write_text('[storage]\nblobs = "s3"\n')
    r = run_pacsgrid(["check", "--config", cfg])
    assert r.returncode != 0 and "[storage.s3]" in r.stderr, r.stderr
    cfg.write_text('[storage]\nblobs = "s3"\n[storage.s3]\nbucket = "b"\n'
                   'secret_access_key = "inline"\n')
    r = run_pacsgrid(["check", "--config", cfg])
    assert r.returncode != 0 and "secret_access_key" in r.stderr, r.stderr


def test_kill9_after_stores_loses_nothing_and_unindexed_bucket_blobs_are_recovered(
        node_factory, moto, corpus):
    s3(moto).create_bucket(Bucket="site-k")
    node = s3_node(node_factory, moto, "site-k", prefix="k1").start()
    store_ok(node, corpus.instances)
    node.kill9()
    node.start()
    want = expected(corpus)
    assert_identical(want, get_all(node, corpus), "after kill -9")

    # A second node whose bucket prefix holds blobs its index never saw (as if it crashed
    # between the upload and the index commit): recovery downloads, parses and indexes them.
    other = s3_node(node_factory, moto, "site-k", prefix="k2").start()
    assert find(other, "STUDY", {"StudyInstanceUID": ""}).uids("StudyInstanceUID") == set()
    other.kill9()
    c = s3(moto)
    for key in objects(moto, "site-k", "k1"):
        c.copy_object(Bucket="site-k", Key="k2/" + key.split("/", 1)[1],
                      CopySource={"Bucket": "site-k", "Key": key})
    # and a stray object that is not DICOM: removed, not indexed
    junk = b"not a DICOM file"
    import hashlib  # a name of the right shape; its content does not match it, as after damage
    h = hashlib.sha256(junk).hexdigest()
    c.put_object(Bucket="site-k", Key=f"k2/{h[:2]}/{h}", Body=junk)
    other.start()
    assert "reconciliation done" in other.log_text()
    assert_identical(want, get_all(other, corpus), "re-indexed from the bucket")
    assert f"k2/{h[:2]}/{h}" not in objects(moto, "site-k", "k2")
    other.stop()
    node.stop()


def test_grid_replicas_land_in_the_bucket(tmp_path, moto):
    """Site b keeps its blobs in S3: copies pulled from site a are staged locally, verified,
    then uploaded; with a stopped, b serves them from the bucket."""
    from test_grid import Grid
    s3(moto).create_bucket(Bucket="grid-b")
    corpus = gen_dataset(tmp_path / "corpus", "--patients", "1", "--studies", "1",
                         "--series", "1", "--instances", "4", "--modality-mix", "MR=1",
                         "--ts-mix", "explicit=1", "--pid-prefix", "S3G", "--seed", "63")
    grid = Grid(tmp_path, sites="a,b", copies=2)
    try:
        b = grid["b"]
        b.config_path.write_text(b.config_path.read_text() + storage_section(
            moto, "grid-b", "b", b.dir / "s3.secret"))
        grid.start()
        store_ok(grid["a"], corpus.instances)
        grid.settle(len(corpus.instances))
        stored = objects(moto, "grid-b", "b")
        assert len(stored) == len(corpus.instances), sorted(stored)
        grid["a"].stop()
        deadline = time.monotonic() + 30
        received = {}
        while time.monotonic() < deadline:
            received = get_all(b, corpus)
            if len(received) == len(corpus.instances):
                break
            time.sleep(0.5)
        assert_identical(expected(corpus), received, "C-GET at b from its bucket")
    finally:
        grid.close()


@pytest.mark.parametrize("blobs", ["folder", "s3"])
def test_a_cached_retrieve_is_kept_in_the_store_and_serves_once_the_holder_is_gone(
        tmp_path, moto, blobs):
    """With `cache_retrieved = true` at b, a C-GET at b of instances held only at a fetches
    them on the fly and keeps the verified bytes in b's blob store (its folder or its bucket)
    as a cache, not as a policy copy: b is not announced as a holder, and once a is stopped
    b still answers C-GET and WADO-RS byte-identical from that cache."""
    from test_grid import Grid
    corpus = gen_dataset(tmp_path / "corpus", "--patients", "1", "--studies", "1",
                         "--series", "2", "--instances", "2", "--modality-mix", "MR=1",
                         "--ts-mix", "explicit=1", "--pid-prefix", "S3C", "--seed", "64")
    grid = Grid(tmp_path, sites="a,b", copies=1, extra={"cache_retrieved": "true"})
    try:
        b = grid["b"]
        cfg = b.config_path.read_text()
        if blobs == "s3":
            s3(moto).create_bucket(Bucket="cache-b")
            cfg += storage_section(moto, "cache-b", "b", b.dir / "s3.secret")
        b.config_path.write_text(cfg)
        grid.start()
        store_ok(grid["a"], corpus.instances)
        grid.settle(len(corpus.instances))
        for inst in corpus.instances:
            assert grid.holders("b", inst.sop_uid) == ["a"], "K = 1: only a holds the bytes"

        assert_identical(expected(corpus), get_all(b, corpus), "on-the-fly C-GET at b")
        hashes = {json.loads(requests.get(
            f"http://127.0.0.1:{b.http_port}/api/v1/instances/{i.sop_uid}",
            timeout=30).text)["hash"] for i in corpus.instances}
        if blobs == "s3":
            kept = {k.rsplit("/", 1)[1] for k in objects(moto, "cache-b", "b")}
        else:
            kept = {h for h in hashes if grid.blob_path("b", h).exists()}
        assert kept == hashes, "the fetched bytes were not kept in b's blob store"
        for inst in corpus.instances:
            assert grid.holders("b", inst.sop_uid) == ["a"], "a cached copy is not a policy copy"

        grid["a"].stop()
        assert_identical(expected(corpus), get_all(b, corpus), "C-GET at b from its cache")
        wado = {i.sop_uid: dataset_bytes(wado_instance(b, i)) for i in corpus.instances}
        assert_identical(expected(corpus), wado, "WADO-RS at b from its cache")
    finally:
        grid.close()
