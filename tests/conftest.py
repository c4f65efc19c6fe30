"""Shared fixtures: the node under test, generated corpora, log dumps on failure."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import harness
from harness import Corpus, Node, gen_dataset, rewrite


# ----------------------------------------------------------------------------------- logs
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On any failure, attach the tail of the log of every node alive at that moment."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for node in list(harness.LIVE_NODES):
            rep.sections.append((f"pacsgrid stderr: {node.name} ({node.log_path})",
                                 node.log_tail(200) or "(empty)"))


def pytest_report_header(config):
    b = harness.pacsgrid_bin()
    return [f"pacsgrid binary: {b} ({'present' if b.exists() else 'MISSING'})",
            f"shared: {harness.SHARED}"]


# ----------------------------------------------------------------------------------- nodes
class NodeFactory:
    def __init__(self, base: Path, prefix: str):
        self.base = base
        self.prefix = prefix
        self.nodes: list[Node] = []

    def __call__(self, start: bool = True, **kw) -> Node:
        name = kw.pop("name", f"{self.prefix}{len(self.nodes)}")
        node = Node(self.base / name, name=name, **kw)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def close(self):
        for n in self.nodes:
            n.close()


@pytest.fixture
def node_factory(tmp_path):
    """Make nodes (started by default) on free ports with temp data dirs; all stopped at teardown."""
    f = NodeFactory(tmp_path, "node")
    yield f
    f.close()


@pytest.fixture
def node(node_factory) -> Node:
    """A fresh, empty, running node."""
    return node_factory()


@pytest.fixture(scope="module")
def module_node_factory(tmp_path_factory, request):
    f = NodeFactory(tmp_path_factory.mktemp(request.module.__name__.replace(".", "_")), "mnode")
    yield f
    f.close()


# ----------------------------------------------------------------------------------- corpora
class Corpora:
    """Session-wide synthetic corpora, generated on first use by ../shared/data/gen_dataset.py.
    Each corpus uses its own seed and PatientID prefix, so UIDs never collide between corpora."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, Corpus] = {}

    def _get(self, name, make):
        if name not in self._cache:
            self._cache[name] = make(self.root / name)
        return self._cache[name]

    @property
    def mixed(self) -> Corpus:
        """38 instances, 4 patients (3 with Latin-1 names), CT/MR/CR, all seven syntaxes."""
        def make(out):
            c = gen_dataset(out, "--patients", "4", "--studies", "2", "--series", "2",
                            "--instances", "3", "--cr-images", "2", "--cr-size", "256",
                            "--modality-mix", "CT=0.4,MR=0.4,CR=0.2",
                            "--ts-mix", "explicit=2,implicit=1,deflate=1,rle=1,jpegls=1,j2k=1,jpegll=1",
                            "--latin1-fraction", "0.5", "--seed", "3", "--pid-prefix", "MIX")
            syntaxes = {i.ts for i in c.instances}
            missing = set(harness.ALL_TS) - syntaxes
            assert not missing, f"mixed corpus lacks transfer syntaxes {missing}"
            assert any(i.charset == "ISO_IR 100" for i in c.instances), "no Latin-1 patient"
            assert {i.modality for i in c.instances} == {"CT", "MR", "CR"}
            return c
        return self._get("mixed", make)

    @property
    def native(self) -> Corpus:
        """One MR study, two series of 4, explicit and implicit VR only (any client can take it)."""
        return self._get("native", lambda out: gen_dataset(
            out, "--patients", "1", "--studies", "1", "--series", "2", "--instances", "4",
            "--modality-mix", "MR=1", "--ts-mix", "explicit=1,implicit=1",
            "--latin1-fraction", "0", "--seed", "5", "--pid-prefix", "NAT"))

    @property
    def issuers(self) -> Corpus:
        """Two people with PatientID DUP000001 under issuers HOSP_A and HOSP_B (one study of 2
        instances each), and patient NOISS000001 whose files carry no IssuerOfPatientID."""
        def make(out):
            for seed, prefix, issuer in (("11", "DUP", "HOSP_A"), ("12", "DUP", "HOSP_B"),
                                         ("13", "NOISS", None)):
                raw = gen_dataset(out.parent / f"{out.name}-raw-{seed}",
                                  "--patients", "1", "--studies", "1", "--series", "1",
                                  "--instances", "2", "--modality-mix", "MR=1",
                                  "--ts-mix", "explicit=1", "--latin1-fraction", "0",
                                  "--seed", seed, "--pid-prefix", prefix)
                for i in raw.instances:
                    dst = out / (issuer or "none") / i.path.relative_to(raw.root)
                    rewrite(i.path, dst, IssuerOfPatientID=issuer)
                shutil.rmtree(raw.root)
            c = Corpus.load(out)
            assert len(c) == 6
            return c
        return self._get("issuers", make)

    @property
    def big(self) -> Corpus:
        """One CR series of 500 tiny (32x32) instances: long C-FIND answers, for C-CANCEL."""
        return self._get("big", lambda out: gen_dataset(
            out, "--patients", "1", "--studies", "1", "--series", "1", "--modality-mix", "CR=1",
            "--cr-images", "500", "--cr-size", "32", "--ts-mix", "explicit=1",
            "--latin1-fraction", "0", "--seed", "21", "--pid-prefix", "BIG"))

    @property
    def durability(self) -> Corpus:
        """960 MR instances (~115 MB), explicit/implicit/RLE: the long ingest that gets killed."""
        return self._get("durability", lambda out: gen_dataset(
            out, "--patients", "4", "--studies", "2", "--series", "2", "--instances", "60",
            "--modality-mix", "MR=1", "--ts-mix", "explicit=3,implicit=1,rle=1",
            "--seed", "31", "--pid-prefix", "DUR"))


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> Corpora:
    return Corpora(tmp_path_factory.mktemp("corpora"))
