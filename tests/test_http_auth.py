"""HTTP authentication, authorization and auditing on a real node.

The node trusts a JWT issuer whose key set is a JWKS file made here (an RSA key pair from
`cryptography`, tokens signed with PyJWT), and API keys (one made with `pacsgrid access
new-key`). Every role × endpoint pair is tried (table-driven); refusals answer 401/403 and
leave a security-alert record; a scripted session leaves exactly one well-formed audit record
per access; an open port without credentials is refused unless `--insecure`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path

import jwt
import pydicom
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from harness import HOST, Node, NodeDied, rewrite, run_pacsgrid

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "crates" / "pacsgrid-audit" / "schema" / "audit-message.rng"
ISSUER = "https://idp.test/realms/hospital"
AUDIENCE = "pacsgrid"
ROLES = ["admin", "radiologist", "clinician", "researcher", "modality"]
PROBLEM = "application/problem+json"
BOUNDARY = "auth-test-boundary"


# ----------------------------------------------------------------------------------- keys
def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Issuer:
    """An RSA key pair with its JWKS; `token()` signs claims like an OIDC provider would."""

    def __init__(self, kid: str = "k1"):
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict:
        pub = self.key.public_key().public_numbers()
        return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                "n": _b64(pub.n), "e": _b64(pub.e)}

    def token(self, user: str, roles: list[str] | None, **over) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"sub-{user}",
                  "preferred_username": user, "iat": now, "exp": now + 600}
        if roles is not None:
            claims["realm_access"] = {"roles": roles + ["offline_access"]}
        claims.update(over)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


def api_key_entry(name: str, key: str, roles: list[str]) -> str:
    sha = hashlib.sha256(key.encode()).hexdigest()
    return (f'\n[[access.http.api_key]]\nname = "{name}"\nsha256 = "{sha}"\n'
            f"roles = [{', '.join(json.dumps(r) for r in roles)}]\n")


def multipart(parts: list[bytes]) -> bytes:
    out = b""
    for p in parts:
        out += f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p
    return out + f"\r\n--{BOUNDARY}--\r\n".encode()


STOW_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'


# ----------------------------------------------------------------------------------- node
class Site:
    def __init__(self, node: Node, issuer: Issuer, cli_key: str, study, victim, scripted):
        self.node, self.issuer, self.cli_key = node, issuer, cli_key
        self.study, self.victim, self.scripted = study, victim, scripted
        self.admin = issuer.token("root-admin", ["admin"])

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.node.http_port}{path}"

    def call(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url(path), headers=headers, timeout=60, **kw)

    def records(self, *args: str) -> list[dict]:
        r = run_pacsgrid(["audit", "search", "--data", self.node.data_dir, "--json", *args],
                         timeout=60)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines()]


def copy_study(src: list, out: Path, tag: str, patient: str):
    """The instances of `src` under fresh study/series/instance UIDs and another patient."""
    root = "1.2.826.0.1.3680043.8.498.77"
    files = []
    for n, inst in enumerate(src):
        files.append(rewrite(inst.path, out / f"{tag}-{n}.dcm",
                             StudyInstanceUID=f"{root}.{tag}",
                             SeriesInstanceUID=f"{root}.{tag}.1",
                             SOPInstanceUID=f"{root}.{tag}.1.{n + 1}",
                             PatientID=patient))
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files], files


@pytest.fixture(scope="module")
def site(module_node_factory, corpora, tmp_path_factory) -> Site:
    tmp = tmp_path_factory.mktemp("auth")
    issuer = Issuer()
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps({"keys": [issuer.jwk()]}))
    r = run_pacsgrid(["access", "new-key", "--name", "viewer-app", "--role", "clinician"])
    assert r.returncode == 0, r.stderr
    cli_key = re.search(r"^#\s+(pgk_\S+)$", r.stdout, re.M).group(1)
    entry = r.stdout[r.stdout.index("[[access.http.api_key]]"):]
    assert hashlib.sha256(cli_key.encode()).hexdigest() in entry and cli_key not in entry

    node = module_node_factory(start=False)
    config = node.config_path.read_text()
    config += (f'\n[access.http.jwt]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
               f'jwks_file = "{jwks}"\nroles_claim = "realm_access.roles"\n')
    config += "\n" + entry
    for role in ROLES:
        config += api_key_entry(f"key-{role}", f"secret-{role}", [role])
    node.config_path.write_text(config)
    node.start()

    native = corpora.native.instances
    s = Site(node, issuer, cli_key, None, None, None)
    # the data the table reads: the native study; a victim study to delete; a study for the
    # scripted session, stored later by the session itself
    study, study_files = copy_study(native[:2], tmp, "10", "AUTH-1")
    victim, victim_files = copy_study(native[:1], tmp, "20", "AUTH-2")
    scripted, scripted_files = copy_study(native[:1], tmp, "30", "AUTH-3")
    for files in (study_files, victim_files):
        rsp = s.call("POST", "/dicom-web/studies", s.admin,
                     data=multipart([f.read_bytes() for f in files]),
                     headers={"Content-Type": STOW_TYPE})
        assert rsp.status_code == 200, rsp.text
    s.study, s.victim, s.scripted = study, victim, (scripted, scripted_files)
    s.study_files = study_files
    return s


# ----------------------------------------------------------------------------------- table
def endpoints(s: Site) -> list[tuple[str, str, str, dict, str, int | None]]:
    """(name, method, path, request kwargs, operation, status when allowed; None: any 2xx)."""
    st = s.study[0]
    inst = (f"/dicom-web/studies/{st.StudyInstanceUID}/series/{st.SeriesInstanceUID}"
            f"/instances/{st.SOPInstanceUID}")
    stow = {"data": multipart([s.study_files[0].read_bytes()]),
            "headers": {"Content-Type": STOW_TYPE}}
    return [
        # by UID: a key researchers may match on (test_researcher_view.py tries the others)
        ("qido", "GET", f"/dicom-web/studies?StudyInstanceUID={st.StudyInstanceUID}", {}, "query", 200),
        ("wado-instance", "GET", inst, {"headers": {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}}, "retrieve", 200),
        ("rendered", "GET", inst + "/rendered", {"headers": {"Accept": "image/png"}}, "retrieve", 200),
        ("metadata", "GET", inst + "/metadata", {}, "retrieve", 200),
        ("wado-uri", "GET", f"/wado?requestType=WADO&studyUID={st.StudyInstanceUID}"
         f"&seriesUID={st.SeriesInstanceUID}&objectUID={st.SOPInstanceUID}"
         "&contentType=application/dicom&transferSyntax=*", {}, "retrieve", 200),
        ("wado-uri-jpeg", "GET", f"/wado?requestType=WADO&studyUID={st.StudyInstanceUID}"
         f"&seriesUID={st.SeriesInstanceUID}&objectUID={st.SOPInstanceUID}", {}, "retrieve", 200),
        ("stow", "POST", "/dicom-web/studies", stow, "store", None),
        ("rest-status", "GET", "/api/v1/status", {}, "status", 200),
        ("rest-patients", "GET", "/api/v1/patients", {}, "query", 200),
        ("rest-studies", "GET", "/api/v1/studies", {}, "query", 200),
        ("rest-instance", "GET", f"/api/v1/instances/{st.SOPInstanceUID}", {}, "retrieve", 200),
        # this node is in no grid: an allowed request reaches the handler, which says so
        ("grid", "GET", "/api/v1/grid", {}, "status", 404),
        ("grid-scrub", "POST", "/api/v1/grid/scrub", {}, "maintain", 404),
        ("prefetch", "POST", "/api/v1/prefetch", {"json": {"patient_id": "AUTH-1"}}, "prefetch", 404),
        ("audit", "GET", "/api/v1/audit?limit=1", {}, "audit", 200),
        # last: the one allowed delete removes the victim
        ("delete", "DELETE", f"/api/v1/studies/{s.victim[0].StudyInstanceUID}", {}, "delete", 200),
    ]


# The role table of pacsgrid-access rules.rs, as the operations each role may do. Researchers
# query and retrieve through the de-identified view, which only DICOMweb serves ("dicomweb-"
# operations); every REST read of patient data refuses them.
ALLOWED = {
    "admin": {"query", "retrieve", "store", "status", "maintain", "prefetch", "audit", "delete"},
    "radiologist": {"query", "retrieve", "store", "status", "prefetch"},
    "clinician": {"query", "retrieve", "status"},
    "researcher": {"dicomweb-query", "dicomweb-retrieve", "status"},
    "modality": {"store", "status"},
    None: set(),  # a valid token without any known role
}


def role_allows(role, op: str, path: str) -> bool:
    if op in ALLOWED[role]:
        return True
    dicomweb = path.startswith("/dicom-web/") or path.startswith("/wado?")
    return dicomweb and f"dicomweb-{op}" in ALLOWED[role]


def test_every_role_on_every_endpoint(site):
    before = len(site.records("--event", "security-alert"))
    wrong, refused = [], 0
    for name, method, path, kw, op, ok_status in endpoints(site):
        for role in ALLOWED:
            token = site.issuer.token(f"user-{role}", [role] if role else None)
            r = site.call(method, path, token, **kw)
            allowed = role_allows(role, op, path)
            if allowed:
                good = (200 <= r.status_code < 300) if ok_status is None else r.status_code == ok_status
            else:
                refused += 1
                good = (r.status_code == 403
                        and r.headers.get("content-type", "").startswith(PROBLEM))
            if not good:
                wrong.append(f"{role} {name}: {r.status_code} {r.text[:200]}")
    assert not wrong, "\n".join(wrong)
    # every refusal left exactly one security alert
    alerts = site.records("--event", "security-alert")[before:]
    assert len(alerts) == refused, [a["user"] for a in alerts]
    assert all(a["outcome"] == 4 for a in alerts)
    # API keys map to the same table
    for role in ROLES:
        r = site.call("GET", "/api/v1/audit?limit=1", f"secret-{role}")
        assert r.status_code == (200 if role == "admin" else 403), (role, r.status_code)


def test_no_or_bad_credentials_are_401_and_audited(site):
    before = len(site.records("--event", "security-alert"))
    path = "/dicom-web/studies"
    r = site.call("GET", path)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.headers["content-type"].startswith(PROBLEM) and r.json()["status"] == 401
    iss = site.issuer
    stranger = Issuer(kid=iss.kid)  # same kid, other key: a forged signature
    bad = {
        "expired": iss.token("eve", ["admin"], exp=int(time.time()) - 3600),
        "not yet valid": iss.token("eve", ["admin"], nbf=int(time.time()) + 3600),
        "wrong issuer": iss.token("eve", ["admin"], iss="https://evil.test/"),
        "wrong audience": iss.token("eve", ["admin"], aud="another-app"),
        "wrong signature": stranger.token("eve", ["admin"]),
        "unknown kid": Issuer(kid="k-unknown").token("eve", ["admin"]),
        "garbage": "not-a-token",
        "wrong api key": "pgk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    }
    for what, token in bad.items():
        r = site.call("GET", path, token)
        assert r.status_code == 401, (what, r.status_code, r.text)
        assert "invalid_token" in r.headers["WWW-Authenticate"], what
        assert token not in r.text, what
    r = site.call("GET", path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401
    alerts = site.records("--event", "security-alert")[before:]
    assert len(alerts) == len(bad) + 2, alerts
    # /healthz and /metrics stay open: probes and scrapers carry no token
    assert site.call("GET", "/healthz").status_code == 200
    assert site.call("GET", "/metrics").status_code == 200


def test_api_keys(site):
    # the key `access new-key` printed, by Authorization and by X-API-Key
    r = site.call("GET", "/api/v1/studies", site.cli_key)
    assert r.status_code == 200, r.text
    r = site.call("GET", "/api/v1/studies", headers={"X-API-Key": site.cli_key})
    assert r.status_code == 200, r.text
    r = site.call("DELETE", f"/api/v1/studies/{site.study[0].StudyInstanceUID}", site.cli_key)
    assert r.status_code == 403
    r = site.call("GET", "/api/v1/studies", site.cli_key[:-1] + "x")
    assert r.status_code == 401
    # the records name the key
    assert site.records("--user", "viewer-app")[-1]["event"] == "security-alert"


def test_scripted_session_leaves_one_record_per_access(site):
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    (ds,), (path,) = site.scripted
    tok = site.issuer.token("scribe", ["admin"])
    study, patient = ds.StudyInstanceUID, ds.PatientID
    r = site.call("POST", "/dicom-web/studies", tok, data=multipart([path.read_bytes()]),
                  headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 200, r.text
    r = site.call("GET", f"/dicom-web/studies?PatientID={patient}", tok)
    assert r.status_code == 200 and len(r.json()) == 1
    r = site.call("GET", f"/dicom-web/studies/{study}/series/{ds.SeriesInstanceUID}"
                         f"/instances/{ds.SOPInstanceUID}", tok,
                  headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200
    r = site.call("DELETE", f"/api/v1/studies/{study}", tok)
    assert r.status_code == 200, r.text

    recs = site.records("--user", "scribe", "--xml")
    # the token's first use is its login; later requests with it are not logins again
    assert [x["event"] for x in recs] == [
        "login", "instances-stored", "query", "instances-transferred", "study-deleted"], recs
    login, recs = recs[0], recs[1:]
    assert login["outcome"] == 0 and login["patient_id"] is None
    assert schema.validate(etree.fromstring(login["xml"].encode())), schema.error_log
    assert "User Authentication" in login["xml"] and "Login" in login["xml"]
    for x in recs:
        assert x["outcome"] == 0
        assert schema.validate(etree.fromstring(x["xml"].encode())), schema.error_log
    stored, query, sent, deleted = recs
    for x in (stored, sent, deleted):
        assert x["patient_id"] == patient and x["study_uids"] == [study], x
    assert query["study_uids"] == []
    assert f"PatientID={patient}" in base64.b64decode(
        re.search(r"<ParticipantObjectQuery>([^<]*)<", query["xml"]).group(1)).decode()
    assert 'ParticipantObjectID="/dicom-web/studies"' in query["xml"]

    # the trail over HTTP: the same records, admins only, and the reading is recorded too
    r = site.call("GET", f"/api/v1/audit?user=scribe&study={study}", site.admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    got = r.json()
    assert [x["seq"] for x in got] == [stored["seq"], sent["seq"], deleted["seq"]]
    assert "xml" not in got[0]
    used = site.records("--event", "audit-log-used", "--user", "root-admin", "--xml")
    assert used and f"study={study}" in used[-1]["xml"]
    assert schema.validate(etree.fromstring(used[-1]["xml"].encode()))
    r = site.call("GET", "/api/v1/audit?since=yesterday", site.admin)
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM)
    r = site.call("GET", "/api/v1/audit", site.issuer.token("doc", ["clinician"]))
    assert r.status_code == 403


def test_open_port_without_credentials_is_refused_unless_insecure(node_factory):
    node = node_factory(start=False)
    node.config_path.write_text(
        node.config_path.read_text().replace('[http]\n', '[http]\n', 1)
        .replace(f'port = {node.http_port}\nbind = "127.0.0.1"',
                 f'port = {node.http_port}\nbind = "0.0.0.0"'))
    assert 'bind = "0.0.0.0"' in node.config_path.read_text()
    with pytest.raises(NodeDied):
        node.start(timeout=30)
    assert "insecure" in node.log_text() and "HTTP" in node.log_text()
    node.start(argv=["serve", "--config", node.config_path, "--insecure"], timeout=60)
    assert node.running()
    node.stop()
    # with credentials configured the same bind is accepted
    node.config_path.write_text(node.config_path.read_text() +
                                api_key_entry("k", "secret", ["clinician"]))
    node.start(timeout=60)
    assert node.running()
