"""Helpers of the end-to-end suite: the node under test, corpora, DICOM clients.

Everything here talks to the real `pacsgrid` binary (PACSGRID_BIN) over real sockets, with real
clients: dcmtk (always by absolute path, see NOTES.md) and pynetdicom.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, _config, build_context, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

# The tests send crafted, deliberately invalid values: never let pydicom refuse to write them,
# and send files as the bytes they hold (no decode / re-encode by pynetdicom).
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
_config.STORE_SEND_CHUNKED_DATASET = True
_config.ENFORCE_UID_CONFORMANCE = False

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PACSGRID_SHARED", REPO.parent / "shared")).resolve()
GEN_DATASET = SHARED / "data" / "gen_dataset.py"
STORESCU_MIXED_CFG = SHARED / "data" / "storescu-mixed.cfg"
DEFAULT_BIN = REPO / "target" / "release" / "pacsgrid"
HOST = "127.0.0.1"
DEFAULT_ISSUER = "TESTISSUER"

# dcmtk by absolute path: pynetdicom installs console scripts with the same names.
DCMTK = {name: f"/usr/bin/{name}" for name in
         ("echoscu", "storescu", "findscu", "getscu", "movescu", "storescp", "dcmdump")}

STORAGE_CLASSES = [CTImageStorage, MRImageStorage, ComputedRadiographyImageStorage,
                   SecondaryCaptureImageStorage]
TS_BY_KEY = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
    "jpegll": JPEGLosslessSV1,
}
ALL_TS = list(TS_BY_KEY.values())

MODELS = {
    "patient": (PatientRootQueryRetrieveInformationModelFind,
                PatientRootQueryRetrieveInformationModelGet,
                PatientRootQueryRetrieveInformationModelMove),
    "study": (StudyRootQueryRetrieveInformationModelFind,
              StudyRootQueryRetrieveInformationModelGet,
              StudyRootQueryRetrieveInformationModelMove),
}

SUCCESS = 0x0000
PENDING = (0xFF00, 0xFF01)
CANCEL = 0xFE00
WARNING_COERCED_OR_DUPLICATE = 0xB000


def is_failure(status: int | None) -> bool:
    """A DIMSE failure status (PS3.7 Annex C): 0xA000-0xAFFF, 0xC000-0xCFFF, 0x01xx, 0x02xx."""
    if status is None:
        return False
    return (0xA000 <= status <= 0xAFFF or 0xC000 <= status <= 0xCFFF
            or 0x0100 <= status <= 0x02FF)


def hexs(status: int | None) -> str:
    return "None (no response: association aborted/closed)" if status is None else f"0x{status:04X}"


# ----------------------------------------------------------------------------------- ports
def free_ports(n: int) -> list[int]:
    """Pick n distinct free TCP ports on loopback by binding port-0 sockets (held together)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def terminate(proc: subprocess.Popen | None, grace: float = 10.0) -> int | None:
    """Stop a process this harness started: SIGTERM, then SIGKILL after `grace` seconds.
    Returns its exit code (None if it was never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode


def wait_for(cond, timeout: float, step: float = 0.01) -> bool:
    """Polls `cond` until it holds or `timeout` seconds pass; says whether it held. For what
    a node does just after answering (a log line, an audit record), never to time it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with socket.create_connection((HOST, port), timeout=1):
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout}s")


def http_get(port: int, path: str, timeout: float = 5.0, accept: str | None = None
             ) -> tuple[int, Message, bytes]:
    """Status, headers (looked up case-insensitively) and body, whatever the status."""
    req = urllib.request.Request(f"http://{HOST}:{port}{path}",
                                 headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers or Message(), e.read()


# ----------------------------------------------------------------------------------- binary
def pacsgrid_bin() -> Path:
    return Path(os.environ.get("PACSGRID_BIN", DEFAULT_BIN))


NODE_ENV_VARS = ("PACSGRID_DATA", "PACSGRID_AE_TITLE", "PACSGRID_DICOM_PORT",
                 "PACSGRID_HTTP_PORT", "PACSGRID_CONFIG", "PACSGRID_SITE", "PACSGRID_LOG_FORMAT")


def clean_env() -> dict:
    """The environment without the node's own variables (a test sets those explicitly)."""
    env = {k: v for k, v in os.environ.items() if k not in NODE_ENV_VARS}
    env["NO_COLOR"] = "1"
    return env


def run_pacsgrid(args: list[str], timeout: float = 300, env: dict | None = None,
                 cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    e = clean_env()
    e.update(env or {})
    return subprocess.run([str(pacsgrid_bin()), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=e, cwd=cwd)


def toml_str(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a valid TOML basic string


@dataclass
class RemoteAE:
    ae_title: str
    port: int
    host: str = HOST
    tls_ca: Path | None = None  # set: the node reaches it over DICOM TLS, trusting this CA


class NodeDied(RuntimeError):
    pass


# Every node started by the suite, for log dumps on failure (see conftest.py).
LIVE_NODES: list["Node"] = []


class Node:
    """One `pacsgrid serve` process on free ports with its own data dir and generated config."""

    def __init__(self, workdir: Path, *, ae_title: str = "PACSGRID", site: str = "site-a",
                 default_issuer: str = DEFAULT_ISSUER, remote_aes: list[RemoteAE] = (),
                 allowed_calling_aes: list[str] | None = None, dicom: dict | None = None,
                 raw_config: str | None = None, name: str = "node"):
        self.name = name
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "pacsgrid.toml"
        self.log_path = self.dir / "node.log"
        self.ae_title = ae_title
        self.dicom_port, self.http_port = free_ports(2)
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        if raw_config is not None:
            self.config_path.write_text(raw_config)
        else:
            self.config_path.write_text(self.make_config(
                site=site, default_issuer=default_issuer, remote_aes=remote_aes,
                allowed_calling_aes=allowed_calling_aes, dicom=dicom or {}))
        LIVE_NODES.append(self)

    def make_config(self, *, site, default_issuer, remote_aes, allowed_calling_aes, dicom) -> str:
        d = {"max_pdu_length": 262144, "max_associations": 64, "association_timeout_secs": 30,
             "idle_timeout_secs": 300}
        d.update(dicom)
        lines = ["[node]", f"data_dir = {toml_str(self.data_dir)}", f"site = {toml_str(site)}",
                 f"default_issuer = {toml_str(default_issuer)}", "",
                 "[dicom]", f"ae_title = {toml_str(self.ae_title)}", f"port = {self.dicom_port}",
                 'bind = "127.0.0.1"']
        for k, v in d.items():
            lines.append(f"{k} = {v}")
        if allowed_calling_aes is not None:
            lines.append("allowed_calling_aes = [" +
                         ", ".join(toml_str(a) for a in allowed_calling_aes) + "]")
        lines += ["", "[http]", f"port = {self.http_port}", 'bind = "127.0.0.1"']
        for r in remote_aes:
            lines += ["", "[[remote_ae]]", f"ae_title = {toml_str(r.ae_title)}",
                      f"host = {toml_str(r.host)}", f"port = {r.port}"]
            if r.tls_ca is not None:
                lines.append(f"tls_ca = {toml_str(r.tls_ca)}")
        return "\n".join(lines) + "\n"

    # -- process control
    def start(self, wait: bool = True, timeout: float = 60.0, argv: list | None = None,
              env: dict | None = None) -> "Node":
        """Start `pacsgrid serve --config <generated>` (or `pacsgrid <argv>` with extra `env`)."""
        assert self.proc is None or self.proc.poll() is not None, "node already running"
        binary = pacsgrid_bin()
        if not binary.exists():
            raise FileNotFoundError(
                f"pacsgrid binary not found at {binary}: build it with "
                "`cargo build --release -p pacsgrid` or set PACSGRID_BIN")
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== test harness: start #{self.starts} of {self.name} "
                  f"(dicom {self.dicom_port}, http {self.http_port}) =====\n".encode())
        log.flush()
        extra_env = env or {}
        env = clean_env()
        env.update(extra_env)
        env.setdefault("RUST_LOG", os.environ.get("PACSGRID_TEST_RUST_LOG", "info"))
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")
        args = [str(a) for a in argv] if argv is not None else [
            "serve", "--config", str(self.config_path)]
        self.proc = subprocess.Popen([str(binary), *args],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                     cwd=self.dir)
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NodeDied(f"{self.name} exited with code {self.proc.returncode} before "
                               f"/healthz answered 200; log tail:\n{self.log_tail()}")
            try:
                status, _, _ = http_get(self.http_port, "/healthz", timeout=2)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: /healthz not 200 after {timeout}s (last: {last}); "
                           f"log tail:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code."""
        return terminate(self.proc, grace)

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout=timeout)

    def close(self) -> None:
        self.stop(grace=5)
        with contextlib.suppress(ValueError):
            LIVE_NODES.remove(self)

    # -- introspection
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 120) -> str:
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_text())
        return "\n".join(text.splitlines()[-lines:])

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{HOST}:{self.dicom_port}"


# ----------------------------------------------------------------------------------- Part 10
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}


def meta_end(data: bytes) -> int:
    """Offset of the first byte after the File Meta Information group of a Part 10 file."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    pos = 132
    while pos + 8 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return pos


def dataset_bytes(path_or_bytes: Path | bytes) -> bytes:
    """The encoded data set of a Part 10 file: every byte after the file meta group."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return data[meta_end(data):]


def multipart_parts(rsp) -> tuple[str, list[tuple[dict, bytes]]]:
    """(boundary, [(part headers, part body)]) of a multipart/related response, parsed
    strictly: every part is delimited as RFC 2046 says, and the close delimiter ends the body."""
    ct = rsp.headers["Content-Type"]
    m = re.search(r'boundary="?([^";]+)"?', ct)
    assert m, f"no boundary in Content-Type {ct!r}"
    boundary = m.group(1).encode()
    body = rsp.content
    assert body.startswith(b"--" + boundary + b"\r\n"), body[:80]
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n"), body[-80:]
    inner = body[len(boundary) + 4:-(len(boundary) + 8)]
    parts = []
    for chunk in inner.split(b"\r\n--" + boundary + b"\r\n"):
        head, _, content = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        parts.append((headers, content))
    return boundary.decode(), parts


def _meta_element(tag_elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" or vr == b"OB" else b" "
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", 2, tag_elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, tag_elem, vr, len(value)) + value


def part10(sop_class: str, sop_uid: str, ts: str, dataset: bytes) -> bytes:
    """A Part 10 file from a raw encoded data set; values are written as given, valid or not."""
    body = (_meta_element(0x0001, b"OB", b"\x00\x01")
            + _meta_element(0x0002, b"UI", sop_class.encode())
            + _meta_element(0x0003, b"UI", sop_uid.encode())
            + _meta_element(0x0010, b"UI", ts.encode())
            + _meta_element(0x0012, b"UI", b"1.2.826.0.1.3680043.8.498.1.2")
            + _meta_element(0x0013, b"SH", b"PGTEST"))
    group_len = struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body))
    return b"\0" * 128 + b"DICM" + group_len + body + dataset


# ----------------------------------------------------------------------------------- corpora
@dataclass
class Inst:
    path: Path
    sop_class: str
    sop_uid: str
    ts: str
    study_uid: str
    series_uid: str
    patient_id: str
    issuer: str | None
    patient_name: str
    charset: str | None
    modality: str
    study_date: str
    study_time: str
    accession: str
    study_description: str
    series_number: int
    instance_number: int

    @property
    def data(self) -> bytes:
        return dataset_bytes(self.path)

    @classmethod
    def read(cls, path: Path) -> "Inst":
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return cls(path=Path(path), sop_class=str(ds.SOPClassUID), sop_uid=str(ds.SOPInstanceUID),
                   ts=str(ds.file_meta.TransferSyntaxUID), study_uid=str(ds.StudyInstanceUID),
                   series_uid=str(ds.SeriesInstanceUID), patient_id=str(ds.PatientID),
                   issuer=(str(ds.IssuerOfPatientID) if "IssuerOfPatientID" in ds else None),
                   patient_name=str(ds.get("PatientName", "")),
                   charset=(str(ds.SpecificCharacterSet) if "SpecificCharacterSet" in ds else None),
                   modality=str(ds.Modality), study_date=str(ds.get("StudyDate", "")),
                   study_time=str(ds.get("StudyTime", "")),
                   accession=str(ds.get("AccessionNumber", "")),
                   study_description=str(ds.get("StudyDescription", "")),
                   series_number=int(ds.get("SeriesNumber", 0) or 0),
                   instance_number=int(ds.get("InstanceNumber", 0) or 0))


@dataclass
class Corpus:
    root: Path
    instances: list[Inst] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path) -> "Corpus":
        files = sorted(p for p in Path(root).rglob("*.dcm") if p.is_file())
        return cls(Path(root), [Inst.read(p) for p in files])

    def __add__(self, other: "Corpus") -> "Corpus":
        return Corpus(self.root, self.instances + other.instances)

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def paths(self) -> list[Path]:
        return [i.path for i in self.instances]

    @property
    def by_uid(self) -> dict[str, Inst]:
        return {i.sop_uid: i for i in self.instances}

    def studies(self) -> dict[str, list[Inst]]:
        out: dict[str, list[Inst]] = {}
        for i in self.instances:
            out.setdefault(i.study_uid, []).append(i)
        return out

    def series(self) -> dict[str, list[Inst]]:
        out: dict[str, list[Inst]] = {}
        for i in self.instances:
            out.setdefault(i.series_uid, []).append(i)
        return out

    def top_dirs(self) -> list[Path]:
        """The patient folders (the corpus root also holds manifest.json, which is no DICOM)."""
        return sorted({self.root / i.path.relative_to(self.root).parts[0] for i in self.instances})


def pydicom_sample_files() -> list[Path]:
    """The well-formed little-endian Part 10 storage objects among pydicom's own test files
    (shipped with pydicom: no download), one per SOP Instance UID."""
    import warnings
    test_files = Path(pydicom.__file__).parent / "data" / "test_files"
    candidates, seen = [], set()
    for path in sorted(test_files.rglob("*.dcm")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a file pydicom warns about is not well-formed
                ds = pydicom.dcmread(path)
                ds.walk(lambda _ds, _el: None)  # parse every element now
            meta = ds.file_meta
            sop_class = UID(meta.MediaStorageSOPClassUID)
            uid = UID(meta.MediaStorageSOPInstanceUID)
            ts = UID(meta.TransferSyntaxUID)
        except Exception:  # noqa: BLE001 - not a well-formed Part 10 file: skip that file
            continue
        if (not ts.is_transfer_syntax or not uid.is_valid or uid != ds.get("SOPInstanceUID")
                or sop_class != ds.get("SOPClassUID") or uid in seen
                or not str(sop_class).startswith("1.2.840.10008.5.1.4.1.1.")
                or not ts.is_little_endian or "StudyInstanceUID" not in ds
                or "SeriesInstanceUID" not in ds):
            continue
        seen.add(uid)
        candidates.append(path)
    return candidates


JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"


def reference_pixels(inst: Inst, tmp: Path):
    """The original's pixels, decoded by pydicom, or by dcmtk's dcmdjpeg for JPEG lossless
    (pydicom has no decoder for it here)."""
    path = inst.path
    if inst.ts == JPEG_LOSSLESS_SV1:
        path = tmp / f"{inst.sop_uid}.dcm"
        subprocess.run(["/usr/bin/dcmdjpeg", str(inst.path), str(path)], check=True,
                       capture_output=True)
    return pydicom.dcmread(path).pixel_array


def gen_dataset(out: Path, *args: str) -> Corpus:
    """Run ../shared/data/gen_dataset.py into `out` and load the result."""
    if not GEN_DATASET.exists():
        raise FileNotFoundError(f"{GEN_DATASET} not found (set PACSGRID_SHARED to shared/)")
    cmd = [sys.executable, str(GEN_DATASET), "--out", str(out), "--force",
           "--jobs", str(min(2, os.cpu_count() or 1)), *args]
    env = dict(os.environ)
    env["PATH"] = "/usr/bin:" + env.get("PATH", "")  # dcmcjpeg from dcmtk
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"gen_dataset.py failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return Corpus.load(out)


def rewrite(src: Path, dst: Path, **changes) -> Path:
    """Copy a Part 10 file with data elements changed (value None deletes), same transfer syntax."""
    ds = pydicom.dcmread(src)
    for kw, v in changes.items():
        if v is None:
            if kw in ds:
                delattr(ds, kw)
        else:
            setattr(ds, kw, v)
    if "SOPInstanceUID" in changes:
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return dst


# ----------------------------------------------------------------------------------- dcmtk
def dcmtk_env() -> dict:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def dcmtk(tool: str, *args, timeout: float = 300, check: bool = False,
          cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run a dcmtk tool by absolute path with TCP_NODELAY=1."""
    cmd = [DCMTK[tool], *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dcmtk_env(),
                       cwd=cwd)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}\nstdout:\n{r.stdout[-4000:]}"
                             f"\nstderr:\n{r.stderr[-4000:]}")
    return r


class StoreSCP:
    """dcmtk storescp as a C-MOVE destination; bit-preserving, accepts every transfer syntax
    unless `accept_all` is false."""

    def __init__(self, workdir: Path, ae_title: str = "STORESCP", port: int | None = None,
                 extra: list | None = None, accept_all: bool = True):
        self.ae_title = ae_title
        # without +xa storescp takes uncompressed syntaxes only, as it does by default
        self.accept = ["+xa"] if accept_all else []
        self.extra = [str(a) for a in extra or []]  # e.g. TLS options
        self.port = port or free_ports(1)[0]
        self.out = Path(workdir) / "received"
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(workdir) / "storescp.log"
        self.proc = None

    def start(self) -> "StoreSCP":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [DCMTK["storescp"], "-v", "-aet", self.ae_title, *self.accept, "+B", "-od", str(self.out),
             "-fe", ".dcm", *self.extra, str(self.port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=dcmtk_env())
        log.close()
        wait_port(self.port)
        return self

    def clear(self) -> None:
        for p in self.out.iterdir():
            p.unlink()

    def received(self) -> dict[str, bytes]:
        """SOPInstanceUID -> data set bytes of every file received so far."""
        out = {}
        for p in sorted(self.out.iterdir()):
            if p.is_file() and p.suffix == ".dcm":
                data = p.read_bytes()
                uid = str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                out[uid] = dataset_bytes(data)
        return out

    def stop(self) -> None:
        terminate(self.proc)


# ----------------------------------------------------------------------------------- pynetdicom
def make_ae(ae_title: str = "PYTEST") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.network_timeout = 120
    ae.maximum_pdu_size = 0  # unlimited receive
    return ae


def status_of(rsp: Dataset | None) -> int | None:
    if rsp is None or "Status" not in rsp:
        return None
    return int(rsp.Status)


@contextlib.contextmanager
def association(node: Node, contexts, ae_title: str = "PYTEST", roles=None, handlers=None,
                called: str | None = None):
    ae = make_ae(ae_title)
    ae.requested_contexts = contexts
    assoc = ae.associate(HOST, node.dicom_port, ae_title=called or node.ae_title,
                         ext_neg=roles or [], evt_handlers=handlers or [])
    if not assoc.is_established:
        raise AssertionError(
            f"association {ae_title}->{called or node.ae_title}@{node.dicom_port} not established "
            f"(rejected={assoc.is_rejected}, aborted={assoc.is_aborted})")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def echo(node: Node, ae_title: str = "PYTEST") -> int | None:
    with association(node, [build_context(Verification)], ae_title) as assoc:
        return status_of(assoc.send_c_echo())


def store_contexts(pairs) -> list:
    """One presentation context per (SOP class, transfer syntax): the receiver cannot choose a
    syntax other than the file's own, so what it stores is exactly the file's data set."""
    pairs = sorted(set(pairs))
    if len(pairs) > 127:
        raise ValueError("too many presentation contexts")
    return [build_context(cls, [ts]) for cls, ts in pairs]


def store(node: Node, items, ae_title: str = "PYTEST") -> dict[Path, int | None]:
    """C-STORE files (Inst or Path) as their exact bytes; returns path -> status (None = no
    response). Raises if the association cannot be established."""
    paths, pairs = [], set()
    for it in items:
        if isinstance(it, Inst):
            paths.append(it.path)
            pairs.add((it.sop_class, it.ts))
        else:
            fm = pydicom.filereader.read_file_meta_info(it)
            paths.append(Path(it))
            pairs.add((str(fm.MediaStorageSOPClassUID), str(fm.TransferSyntaxUID)))
    result: dict[Path, int | None] = {}
    ctxs = store_contexts(pairs)
    with association(node, ctxs, ae_title) as assoc:
        for p in paths:
            if not assoc.is_established:
                result[p] = None
                continue
            result[p] = status_of(assoc.send_c_store(p))
    return result


def store_ok(node: Node, items, ae_title: str = "PYTEST") -> None:
    res = store(node, items, ae_title)
    bad = {str(p): hexs(s) for p, s in res.items() if s != SUCCESS}
    assert not bad, f"C-STORE did not succeed for {len(bad)} of {len(res)} files: {bad}"


@dataclass
class FindResult:
    identifiers: list[Dataset]
    status: int | None
    statuses: list[int | None]

    def values(self, keyword: str) -> list[str]:
        return [str(d.get(keyword, "")) for d in self.identifiers]

    def uids(self, keyword: str) -> set[str]:
        vals = self.values(keyword)
        assert len(vals) == len(set(vals)), f"duplicate {keyword} in C-FIND responses: {vals}"
        return set(vals)


def query_dataset(level: str | None, keys: dict, charset: str | None = None) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    if level is not None:
        ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def find(node: Node, level: str | None, keys: dict, model: str = "study",
         charset: str | None = None, ae_title: str = "PYTEST", identifier: Dataset | None = None
         ) -> FindResult:
    ds = identifier if identifier is not None else query_dataset(level, keys, charset)
    find_model = MODELS[model][0]
    with association(node, [build_context(find_model)], ae_title) as assoc:
        idents, statuses = [], []
        for status, ident in assoc.send_c_find(ds, find_model):
            s = status_of(status)
            statuses.append(s)
            if s in PENDING and ident is not None:
                idents.append(ident)
        return FindResult(idents, statuses[-1] if statuses else None, statuses)


def instance_uids(node: Node) -> list[str]:
    """Every SOPInstanceUID the node answers for (with repeats, if the node repeats)."""
    out = []
    studies = find(node, "STUDY", {"StudyInstanceUID": ""})
    assert studies.status == SUCCESS, f"study C-FIND failed: {hexs(studies.status)}"
    for st in studies.identifiers:
        res = find(node, "IMAGE", {"StudyInstanceUID": st.StudyInstanceUID,
                                   "SeriesInstanceUID": "", "SOPInstanceUID": ""})
        assert res.status == SUCCESS, f"image C-FIND failed: {hexs(res.status)}"
        out += res.values("SOPInstanceUID")
    return out


def find_sop(node: Node, inst_or_uid, study_uid: str | None = None,
             series_uid: str | None = None) -> int:
    """How many IMAGE-level matches the node has for one SOP Instance UID."""
    if isinstance(inst_or_uid, Inst):
        uid, study_uid, series_uid = inst_or_uid.sop_uid, inst_or_uid.study_uid, inst_or_uid.series_uid
    else:
        uid = inst_or_uid
    res = find(node, "IMAGE", {"StudyInstanceUID": study_uid or "",
                               "SeriesInstanceUID": series_uid or "", "SOPInstanceUID": uid})
    assert res.status == SUCCESS, f"image C-FIND failed: {hexs(res.status)}"
    return len(res.identifiers)


@dataclass
class RetrieveResult:
    received: dict[str, bytes]          # SOPInstanceUID -> raw data set bytes as received
    transfer_syntaxes: dict[str, str]   # SOPInstanceUID -> transfer syntax of the context
    status: int | None
    final: Dataset | None
    duplicates: list[str]

    def count(self, keyword: str) -> int | None:
        if self.final is None or keyword not in self.final:
            return None
        return int(self.final.get(keyword))


def get_contexts(model: str, classes=STORAGE_CLASSES, syntaxes=ALL_TS):
    ctxs = [build_context(MODELS[model][1])]
    ctxs += [build_context(c, [ts]) for c in classes for ts in syntaxes]
    roles = [build_role(c, scp_role=True) for c in classes]
    return ctxs, roles


def c_get(node: Node, level: str, keys: dict, model: str = "study",
          ae_title: str = "PYTEST") -> RetrieveResult:
    received: dict[str, bytes] = {}
    tss: dict[str, str] = {}
    dups: list[str] = []
    lock = threading.Lock()

    def on_store(event):
        uid = str(event.request.AffectedSOPInstanceUID)
        raw = event.request.DataSet.getvalue()
        with lock:
            if uid in received:
                dups.append(uid)
            received[uid] = raw
            tss[uid] = str(event.context.transfer_syntax)
        return 0x0000

    ctxs, roles = get_contexts(model)
    final, last = None, None
    with association(node, ctxs, ae_title, roles=roles,
                     handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
        for status, _ident in assoc.send_c_get(query_dataset(level, keys), MODELS[model][1]):
            last = status_of(status)
            final = status
    return RetrieveResult(received, tss, last, final, dups)


def c_move(node: Node, level: str, keys: dict, dest: str, model: str = "study",
           ae_title: str = "PYTEST") -> RetrieveResult:
    final, last = None, None
    with association(node, [build_context(MODELS[model][2])], ae_title) as assoc:
        for status, _ident in assoc.send_c_move(query_dataset(level, keys), dest,
                                                MODELS[model][2]):
            last = status_of(status)
            final = status
    return RetrieveResult({}, {}, last, final, [])


def assert_identical(expected: dict[str, bytes], received: dict[str, bytes], what: str) -> None:
    missing = sorted(set(expected) - set(received))
    extra = sorted(set(received) - set(expected))
    differ = sorted(u for u in set(expected) & set(received) if expected[u] != received[u])
    msgs = []
    if missing:
        msgs.append(f"{len(missing)} of {len(expected)} not received, e.g. {missing[:3]}")
    if extra:
        msgs.append(f"{len(extra)} unexpected instances received, e.g. {extra[:3]}")
    if differ:
        u = differ[0]
        a, b = expected[u], received[u]
        first = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
        msgs.append(f"{len(differ)} received with different bytes, e.g. {u}: sizes "
                    f"{len(a)} sent vs {len(b)} received, first difference at byte {first}")
    assert not msgs, f"{what}: " + "; ".join(msgs)


NATIVE_TS = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def decode_raw(raw: bytes, ts: str) -> Dataset:
    """Decode a raw (non-Part 10) data set in transfer syntax `ts`."""
    import zlib
    from io import BytesIO
    from pydicom.filereader import read_dataset
    ts = UID(ts)
    if ts.is_deflated:
        raw = zlib.decompress(raw, -zlib.MAX_WBITS)
    return read_dataset(BytesIO(raw), ts.is_implicit_VR, ts.is_little_endian)


def content_differences(a: Dataset, b: Dataset, prefix: str = "") -> list[str]:
    """Element-wise differences of two decoded data sets, ignoring the encoding (explicit vs
    implicit VR: an element that one side only knows as UN is compared by its bytes)."""
    diffs = []
    for tag in sorted(set(a.keys()) | set(b.keys())):
        if tag not in a or tag not in b:
            diffs.append(f"{prefix}{tag} only in {'first' if tag in a else 'second'}")
            continue
        ea, eb = a[tag], b[tag]
        if ea.VR == "SQ" and eb.VR == "SQ":
            if len(ea.value) != len(eb.value):
                diffs.append(f"{prefix}{tag} item count")
            for n, (ia, ib) in enumerate(zip(ea.value, eb.value)):
                diffs += content_differences(ia, ib, f"{prefix}{tag}[{n}].")
            continue
        va, vb = ea.value, eb.value
        if ea.VR != eb.VR and "UN" in (ea.VR, eb.VR):
            def as_bytes(v):
                if isinstance(v, bytes):
                    return v.rstrip(b"\0 ")
                return str(v).encode("latin-1", "replace").rstrip(b"\0 ")
            if as_bytes(va) != as_bytes(vb):
                diffs.append(f"{prefix}{tag} ({ea.VR}/{eb.VR})")
        elif va != vb:
            diffs.append(f"{prefix}{tag} {ea.keyword}")
    return diffs


def assert_same_content(inst: "Inst", raw: bytes, ts: str, what: str) -> None:
    """Received data set `raw` (in `ts`) holds the instance: byte-identical when sent in the
    stored syntax; the same elements and values when converted between the two uncompressed
    syntaxes (a lossless change the receiver asked for)."""
    if ts == inst.ts:
        assert raw == inst.data, (f"{what}: {inst.sop_uid} sent in its own transfer syntax "
                                  f"but with different bytes ({len(raw)} vs {len(inst.data)})")
        return
    assert {ts, inst.ts} <= NATIVE_TS, (
        f"{what}: {inst.sop_uid} stored as {UID(inst.ts).name} came as {UID(ts).name}")
    diffs = content_differences(decode_raw(inst.data, inst.ts), decode_raw(raw, ts))
    assert not diffs, f"{what}: {inst.sop_uid} converted {inst.ts} -> {ts} differs: {diffs[:5]}"
