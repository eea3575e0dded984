"""What an HTTP client really gets from a registry: the ground truth the scanners are held to.

:func:`survey` walks one registry the way clients use it: for every repo (found on disk) it GETs
every tag (listed by the API), every manifest that has a revision link, every child of every
servable index, every config and layer of every manifest a client can pull (tagged, or a child
of a servable tagged index), and every ``_layers`` link's blob. Each GET is classified:

- ``ok``            200, every announced byte, content hashes to the digest
- ``not_found``     404
- ``server_error``  5xx (what a garbage link file gives)
- ``short``         200 but fewer bytes than Content-Length (descriptor cache outlived the data)
- ``wrong_blob``    200 for another digest (Docker-Content-Digest differs: a link file naming
                    another blob whose own link is valid)
- ``empty``         200 with 0 bytes announced and sent, for a digest that is not the empty blob
- ``corrupt``       200 with every announced byte, but the content hashes to something else
- ``http_<code>``   anything else

The ``expected_*`` methods turn those answers into the findings a correct scanner must report
(sets of keys), so a test compares them both ways: nothing broken missed, nothing working
flagged. Only HTTP answers decide what is broken; the disk is read only to know which link
files and revisions exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import storage
from .oci import ATTESTATION_TYPE, ATTESTATION_TYPE_KEY, RegistryClient, read_body, sha256_digest
from .s3path import S3Path

OK = "ok"
NOT_FOUND = "not_found"
SERVER_ERROR = "server_error"
SHORT = "short"
EMPTY = "empty"
CORRUPT = "corrupt"
WRONG_BLOB = "wrong_blob"
# What the index audit is expected to call an unservable blob (a corrupt one is the digest
# scrub's business: the audit does not hash).
UNSERVABLE = (NOT_FOUND, SERVER_ERROR, SHORT, EMPTY, WRONG_BLOB)
# A blob GET never parses content: these answers come from the link file.
BAD_LINK = (SERVER_ERROR, WRONG_BLOB)


def classify(status: int, announced: int | None, body: bytes, error: str | None,
             expected_digest: str | None, served_digest: str | None = None) -> str:
    if status == 404:
        return NOT_FOUND
    if status >= 500:
        return SERVER_ERROR
    if status != 200:
        return f"http_{status}"
    if error or (announced is not None and len(body) < announced):
        return SHORT
    if expected_digest and served_digest and served_digest != expected_digest:
        return WRONG_BLOB
    if expected_digest and sha256_digest(body) != expected_digest:
        return EMPTY if not body else CORRUPT
    return OK


@dataclass(frozen=True)
class Probe:
    """One GET and its classified outcome."""

    kind: str  # "manifest" or "blob"
    repo: str
    reference: str  # tag or digest
    status: int
    announced: int | None
    received: int
    outcome: str
    served_digest: str | None
    error: str | None
    content_type: str | None = None
    body: bytes = field(default=b"", repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    def doc(self) -> dict | None:
        """The manifest JSON when the body parses as an object."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None and value.isdigit() else None


def probe_manifest(client: RegistryClient, repo: str, reference: str) -> Probe:
    response = client.get_manifest(repo, reference)
    body, error = read_body(response)
    served = response.headers.get("Docker-Content-Digest")
    expected = reference if reference.startswith("sha256:") else served
    outcome = classify(response.status_code, _content_length(response), body, error, expected, served)
    return Probe("manifest", repo, reference, response.status_code, _content_length(response),
                 len(body), outcome, served, error, response.headers.get("Content-Type"), body)


def probe_blob(client: RegistryClient, repo: str, digest: str) -> Probe:
    response = client.get_blob(repo, digest)
    body, error = read_body(response)
    served = response.headers.get("Docker-Content-Digest")
    outcome = classify(response.status_code, _content_length(response), body, error, digest, served)
    return Probe("blob", repo, digest, response.status_code, _content_length(response),
                 len(body), outcome, served, error)


@dataclass
class ChildTruth:
    digest: str
    platform: dict
    attestation: bool
    probe: Probe


@dataclass
class IndexTruth:
    repo: str
    digest: str
    media_type: str
    tags: list[str]
    children: list[ChildTruth]


@dataclass
class ReferencedBlob:
    repo: str
    digest: str
    kind: str  # "config" or "layer"
    manifests: set[str]
    tags: set[str]
    probe: Probe


@dataclass
class RegistryTruth:
    """Every probe made over one registry, and the findings they imply."""

    name: str
    v2: Path
    tags: dict[tuple[str, str], Probe] = field(default_factory=dict)
    revisions: dict[tuple[str, str], Probe] = field(default_factory=dict)
    layer_links: dict[tuple[str, str], Probe] = field(default_factory=dict)
    indexes: dict[tuple[str, str], IndexTruth] = field(default_factory=dict)
    blobs: dict[tuple[str, str], ReferencedBlob] = field(default_factory=dict)
    probes: dict[tuple[str, str, str], Probe] = field(default_factory=dict)

    def broken(self) -> list[Probe]:
        """Every GET that did not give the client what it asked for."""
        return sorted((p for p in self.probes.values() if not p.ok),
                      key=lambda p: (p.kind, p.repo, p.reference))

    # -- registry_blob_scan ------------------------------------------------------------

    def expected_orphan_layer_links(self) -> set[tuple[str, str]]:
        return {key for key, p in self.layer_links.items() if p.outcome == NOT_FOUND}

    def _revision_link_valid(self, repo: str, digest: str) -> bool:
        return storage.read_link(storage.revision_link(self.v2, repo, digest)) == digest

    def expected_invalid_link_files(self) -> set[tuple[str, str, str]]:
        """Links the registry answers 500 or another blob for. A blob GET never parses content,
        so such an answer is the link's; a manifest 500 is the link's only if the link file is
        not valid (else the manifest bytes are: see :meth:`expected_invalid_manifests`)."""
        layer = {(r, d, "layer") for (r, d), p in self.layer_links.items() if p.outcome in BAD_LINK}
        revision = {(r, d, "revision") for (r, d), p in self.revisions.items()
                    if p.outcome in BAD_LINK and not self._revision_link_valid(r, d)}
        return layer | revision

    def expected_zero_byte_blobs(self) -> dict[str, list[str]]:
        found: dict[str, set[str]] = {}
        for (repo, digest), p in self.layer_links.items():
            if p.outcome == EMPTY:
                found.setdefault(digest, set()).add(repo)
        return {digest: sorted(repos) for digest, repos in found.items()}

    def expected_corrupt_blobs(self) -> set[str]:
        """Digests whose stored content is not what they name: served in full but hashing to
        something else (zero-byte data included), or manifests the registry refuses to parse (a valid revision link and
        a 500: it validated them on push, so their bytes changed since)."""
        served_wrong = {p.reference for p in self.probes.values()
                        if p.outcome in (CORRUPT, EMPTY) and p.reference.startswith("sha256:")}
        return served_wrong | {d for _, d in self.expected_invalid_manifests()}

    # -- registry_index_audit ----------------------------------------------------------

    def expected_broken_tags(self) -> set[tuple[str, str]]:
        return {key for key, p in self.tags.items() if not p.ok}

    def expected_orphan_index_children(self) -> set[tuple[str, str, str]]:
        return {(ix.repo, ix.digest, child.digest)
                for ix in self.indexes.values() for child in ix.children if not child.probe.ok}

    def expected_unservable_blobs(self) -> set[tuple[str, str, str]]:
        return {(b.repo, b.digest, b.kind) for b in self.blobs.values() if b.probe.outcome in UNSERVABLE}

    def expected_invalid_manifests(self) -> set[tuple[str, str]]:
        """Revisions whose bytes are not a manifest: a 2.8 registry answers 500 when it cannot
        parse them (valid link, data present), or serves them and the client cannot."""
        return {(r, d) for (r, d), p in self.revisions.items()
                if (p.outcome == SERVER_ERROR and self._revision_link_valid(r, d))
                or (p.outcome == CORRUPT and p.doc() is None)}


def survey(client: RegistryClient, v2: Path, name: str = "") -> RegistryTruth:
    """GET everything a client could ask a registry for and classify each answer."""
    v2 = v2 if isinstance(v2, S3Path) else Path(v2)
    truth = RegistryTruth(name or v2.parent.parent.parent.name, v2)

    def manifest(repo: str, ref: str) -> Probe:
        key = ("manifest", repo, ref)
        if key not in truth.probes:
            truth.probes[key] = probe_manifest(client, repo, ref)
        return truth.probes[key]

    def blob(repo: str, digest: str) -> Probe:
        key = ("blob", repo, digest)
        if key not in truth.probes:
            truth.probes[key] = probe_blob(client, repo, digest)
        return truth.probes[key]

    for repo in storage.repositories(v2):
        tags_of: dict[str, list[str]] = {}
        for tag in client.tags(repo):
            probe = manifest(repo, tag)
            truth.tags[(repo, tag)] = probe
            if probe.ok:
                tags_of.setdefault(probe.served_digest, []).append(tag)
        for digest, _ in storage.revision_links(v2, repo):
            truth.revisions[(repo, digest)] = manifest(repo, digest)

        servable = {d: manifest(repo, d) for d in set(tags_of) | {d for r, d in truth.revisions if r == repo}}
        for digest, probe in sorted(servable.items()):
            doc = probe.doc() if probe.ok else None
            if not doc or doc.get("manifests") is None:
                continue
            children = []
            for desc in doc["manifests"]:
                children.append(ChildTruth(
                    desc["digest"],
                    desc.get("platform") or {},
                    (desc.get("annotations") or {}).get(ATTESTATION_TYPE_KEY) == ATTESTATION_TYPE,
                    manifest(repo, desc["digest"]),
                ))
            media_type = doc.get("mediaType") or probe.content_type
            truth.indexes[(repo, digest)] = IndexTruth(repo, digest, media_type,
                                                       sorted(tags_of.get(digest, [])), children)

        # Blobs a client pulls: those of tagged manifests and of children of tagged indexes.
        pullable: list[tuple[str, set[str]]] = []
        for digest, tags in tags_of.items():
            pullable.append((digest, set(tags)))
            index = truth.indexes.get((repo, digest))
            if index:
                pullable += [(c.digest, set(tags)) for c in index.children if c.probe.ok]
        for digest, tags in pullable:
            doc = manifest(repo, digest).doc()
            if not doc or doc.get("manifests") is not None:
                continue
            refs = [("config", doc.get("config"))] + [("layer", d) for d in doc.get("layers") or []]
            for kind, desc in refs:
                if not desc:
                    continue
                entry = truth.blobs.get((repo, desc["digest"]))
                if entry is None:
                    entry = ReferencedBlob(repo, desc["digest"], kind, set(), set(), blob(repo, desc["digest"]))
                    truth.blobs[(repo, desc["digest"])] = entry
                entry.manifests.add(digest)
                entry.tags |= tags

        for digest, _ in storage.layer_links(v2, repo):
            truth.layer_links[(repo, digest)] = blob(repo, digest)
    return truth

