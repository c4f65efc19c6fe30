"""`pacsgrid grid init` / `grid add-site`: CA, site certificates, site configs and grid.json.

The certificates are checked with Python's own TLS stack (OpenSSL), independently of rustls:
two sites of one grid complete a mutual-TLS handshake, verifying each other's chain and the
server's name. The configs are checked by starting `pacsgrid serve` with them.
"""
from __future__ import annotations

import json
import os
import random
import socket
import ssl
import stat
import threading
import tomllib
from pathlib import Path

import pytest

from harness import HOST, Node, echo, http_get, run_pacsgrid, SUCCESS

SITES = ["a", "b", "c"]


def free_base_port(n_sites: int) -> int:
    """A base port whose whole block (10 ports a site) is free on loopback right now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000, 10)
        socks = []
        try:
            for i in range(n_sites + 1):  # one spare block for add-site
                for off in (0, 1, 2):
                    s = socket.socket()
                    s.bind((HOST, base + 10 * i + off))
                    socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block found")


def grid_init(out: Path, sites=SITES, *extra: str):
    base = free_base_port(len(sites))
    r = run_pacsgrid(["grid", "init", "--sites", ",".join(sites), "--out", out,
                      "--base-port", base, *extra])
    return base, r


@pytest.fixture
def grid(tmp_path):
    out = tmp_path / "grid"
    base, r = grid_init(out, SITES, "--copies", "2", "--lost-after", "5", "--host", "localhost")
    assert r.returncode == 0, f"grid init failed:\n{r.stdout}\n{r.stderr}"
    return out, base, r


def load_summary(out: Path) -> dict:
    return json.loads((out / "grid.json").read_text())


def site_node(tmp_path: Path, site: dict) -> Node:
    """A harness Node driving `serve --config <site config>` on the ports grid init chose."""
    node = Node(tmp_path / f"run-{site['name']}", raw_config="", name=f"grid-{site['name']}",
                ae_title=site["ae_title"])
    node.dicom_port = site["dicom_port"]
    node.http_port = site["http_port"]
    return node


def start_site(tmp_path: Path, site: dict) -> Node:
    return site_node(tmp_path, site).start(argv=["serve", "--config", site["config"]])


def mtls_handshake(ca: Path, server: str, client: str, out: Path, server_name: str) -> str:
    """One TLS handshake between two sites' credentials with OpenSSL: each side requires the
    other's certificate to chain to `ca`, the client checks `server_name`. Returns the site
    name (CN) the server saw in the client's certificate."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(out / f"{server}.pem", out / f"{server}.key")
    sctx.load_verify_locations(ca)
    sctx.verify_mode = ssl.CERT_REQUIRED
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_cert_chain(out / f"{client}.pem", out / f"{client}.key")
    cctx.load_verify_locations(ca)
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    seen: dict = {}

    def serve_one():
        conn, _ = listener.accept()
        try:
            with sctx.wrap_socket(conn, server_side=True) as tls:
                subject = dict(x[0] for x in tls.getpeercert()["subject"])
                seen["cn"] = subject["commonName"]
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            seen["error"] = e

    t = threading.Thread(target=serve_one, daemon=True)
    t.start()
    try:
        with socket.create_connection((HOST, port), timeout=10) as raw:
            with cctx.wrap_socket(raw, server_hostname=server_name) as tls:
                assert tls.recv(2) == b"ok"
    finally:
        t.join(10)
        listener.close()
    assert "error" not in seen, seen
    return seen["cn"]


# ----------------------------------------------------------------------------------- init
def test_init_writes_ca_certificates_configs_and_summary(grid):
    out, base, r = grid
    for name in ["ca.pem", "ca.key", "grid.json"] + [f"{s}.{ext}" for s in SITES
                                                     for ext in ("pem", "key", "toml")]:
        assert (out / name).is_file(), f"{name} missing; stdout:\n{r.stdout}"
    for key in ["ca.key"] + [f"{s}.key" for s in SITES]:
        mode = stat.S_IMODE(os.stat(out / key).st_mode)
        assert mode == 0o600, f"{key} has mode {oct(mode)}, private keys must be 0600"

    summary = load_summary(out)
    assert summary["copies"] == 2
    assert summary["lost_after_secs"] == 5
    assert Path(summary["ca_cert"]) == (out / "ca.pem").resolve()
    assert [s["name"] for s in summary["sites"]] == SITES
    for i, s in enumerate(summary["sites"]):
        assert set(s) >= {"name", "config", "data_dir", "ae_title", "dicom_port", "http_port",
                          "grid_url"}
        assert s["dicom_port"] == base + 10 * i
        assert s["http_port"] == base + 10 * i + 1
        assert s["grid_url"] == f"https://127.0.0.1:{base + 10 * i + 2}"
        assert s["ae_title"] == f"PACSGRID_{s['name'].upper()}"
        for key in ("config", "data_dir"):
            assert Path(s[key]).is_absolute(), f"{key} {s[key]} is not absolute"
        assert Path(s["config"]) == (out / f"{s['name']}.toml").resolve()

        cfg = tomllib.loads(Path(s["config"]).read_text())
        assert cfg["node"]["site"] == s["name"]
        assert cfg["node"]["default_issuer"] == s["name"].upper()
        assert Path(cfg["node"]["data_dir"]) == Path(s["data_dir"])
        assert cfg["dicom"] == {"ae_title": s["ae_title"], "port": s["dicom_port"],
                                "bind": "127.0.0.1"}
        assert cfg["http"] == {"port": s["http_port"], "bind": "127.0.0.1"}
        g = cfg["grid"]
        assert g["listen"] == f"127.0.0.1:{s['dicom_port'] + 2}"
        assert g["url"] == s["grid_url"]
        assert g["copies"] == 2 and g["lost_after_secs"] == 5
        for key in ("ca_cert", "cert", "key"):
            assert Path(g[key]).is_absolute() and Path(g[key]).is_file(), g[key]
        others = [o for o in summary["sites"] if o["name"] != s["name"]]
        assert g["peers"] == [{"name": o["name"], "url": o["grid_url"]} for o in others]
        assert cfg["remote_ae"] == [{"ae_title": o["ae_title"], "host": "127.0.0.1",
                                     "port": o["dicom_port"]} for o in others]

    assert "pacsgrid serve --config" in r.stdout
    for s in summary["sites"]:
        assert s["config"] in r.stdout, "the summary names the command to start each site"


def test_site_certificates_authenticate_each_other(grid):
    out, _, _ = grid
    ca = out / "ca.pem"
    # Both directions, by IP (always in the certificate) and by a --host name.
    assert mtls_handshake(ca, "a", "b", out, "127.0.0.1") == "b"
    assert mtls_handshake(ca, "b", "a", out, "localhost") == "a"
    assert mtls_handshake(ca, "c", "a", out, "c") == "a"
    info = ssl._ssl._test_decode_cert(str(out / "a.pem"))
    sans = {v for _, v in info["subjectAltName"]}
    assert {"a", "localhost", "127.0.0.1"} <= sans, sans


def test_site_configs_start_a_node_each(grid, tmp_path):
    out, _, _ = grid
    summary = load_summary(out)
    nodes = []
    try:
        for s in summary["sites"]:
            nodes.append(start_site(tmp_path, s))
        for node, s in zip(nodes, summary["sites"]):
            status, _, body = http_get(s["http_port"], "/healthz")
            assert status == 200, body
            assert echo(node) == SUCCESS
            assert Path(s["data_dir"]).is_dir(), "the node uses the data dir grid init named"
    finally:
        for n in nodes:
            n.close()


def test_init_refuses_an_existing_grid(grid):
    out, _, _ = grid
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _, r = grid_init(out, ["x", "y"])
    assert r.returncode != 0
    assert "already exists" in r.stderr and "ca.key" in r.stderr, r.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before, "a refused init changed files of the existing grid"


@pytest.mark.parametrize("sites,extra,message", [
    (["a"], [], "at least 2 sites"),
    (["a", "b", "a"], [], "twice"),
    (["a", "Bad_Name"], [], "invalid site name"),
    (["a", "b"], ["--copies", "3"], "--copies"),
    (["a", "b"], ["--copies", "0"], "--copies"),
])
def test_init_refuses_bad_arguments(tmp_path, sites, extra, message):
    out = tmp_path / "g"
    _, r = grid_init(out, sites, *extra)
    assert r.returncode != 0, r.stdout
    assert message in r.stderr, r.stderr
    assert not (out / "ca.key").exists(), "nothing is written for refused arguments"


# ----------------------------------------------------------------------------------- add-site
def test_add_site_extends_the_grid(grid, tmp_path):
    out, base, _ = grid
    r = run_pacsgrid(["grid", "add-site", "d", "--dir", out, "--host", "localhost"])
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    for ext in ("pem", "key", "toml"):
        assert (out / f"d.{ext}").is_file()
    assert stat.S_IMODE(os.stat(out / "d.key").st_mode) == 0o600

    summary = load_summary(out)
    assert [s["name"] for s in summary["sites"]] == SITES + ["d"]
    d = summary["sites"][-1]
    assert d["dicom_port"] == base + 30 and d["http_port"] == base + 31
    assert d["grid_url"] == f"https://127.0.0.1:{base + 32}"
    assert d["ae_title"] == "PACSGRID_D"
    cfg = tomllib.loads((out / "d.toml").read_text())
    assert [p["name"] for p in cfg["grid"]["peers"]] == SITES
    assert [a["ae_title"] for a in cfg["remote_ae"]] == [f"PACSGRID_{s.upper()}" for s in SITES]
    assert mtls_handshake(out / "ca.pem", "a", "d", out, "127.0.0.1") == "d"

    # The printed entries are what the other sites add: valid TOML naming d.
    printed = r.stdout[r.stdout.index("[[grid.peers]]"):]
    entries = tomllib.loads(printed)
    assert entries["grid"]["peers"] == [{"name": "d", "url": d["grid_url"]}]
    assert entries["remote_ae"] == [{"ae_title": "PACSGRID_D", "host": "127.0.0.1",
                                     "port": d["dicom_port"]}]

    # Appended to a's config, a still starts; d starts from its own config.
    a_cfg = out / "a.toml"
    a_cfg.write_text(a_cfg.read_text() + "\n" + printed)
    a_toml = tomllib.loads(a_cfg.read_text())
    assert [p["name"] for p in a_toml["grid"]["peers"]] == ["b", "c", "d"]
    nodes = []
    try:
        nodes.append(start_site(tmp_path, summary["sites"][0]))
        nodes.append(start_site(tmp_path, d))
        for n in nodes:
            assert echo(n) == SUCCESS
    finally:
        for n in nodes:
            n.close()

    again = run_pacsgrid(["grid", "add-site", "d", "--dir", out])
    assert again.returncode != 0 and "already" in again.stderr, again.stderr
    bad = run_pacsgrid(["grid", "add-site", "E", "--dir", out])
    assert bad.returncode != 0 and "invalid site name" in bad.stderr, bad.stderr
    assert len(load_summary(out)["sites"]) == 4
