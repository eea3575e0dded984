"""Build OCI / Docker images and push or pull them over the registry HTTP API (``requests``).

Builders return :class:`Manifest` objects that carry everything a push needs (their blobs and,
for indexes, their child manifests); :class:`RegistryClient` pushes and pulls them.

    from tests.support.oci import RegistryClient, make_multiarch

    client = RegistryClient("http://127.0.0.1:5000")
    app = make_multiarch(seed=1)                       # OCI index: linux/amd64, linux/arm64/v8,
    client.push("demo/app", app, tag="v1")             # plus one attestation per platform
    report = client.pull("demo/app", "v1")             # like `docker pull` of every platform
    assert report.ok, report.problems

Everything is deterministic for a given seed, so two builds with the same seed give the same
digests (handy to share layers or children between images on purpose).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from urllib.parse import urljoin

import requests
import urllib3

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# Without these a 2.8 registry answers 404 for OCI content, or rewrites a list to one platform.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

ATTESTATION_TYPE_KEY = "vnd.docker.reference.type"
ATTESTATION_DIGEST_KEY = "vnd.docker.reference.digest"
ATTESTATION_TYPE = "attestation-manifest"

FLAVORS = {
    "oci": {"manifest": OCI_MANIFEST, "index": OCI_INDEX, "config": OCI_CONFIG, "layer": OCI_LAYER},
    "docker": {
        "manifest": DOCKER_MANIFEST,
        "index": DOCKER_LIST,
        "config": DOCKER_CONFIG,
        "layer": DOCKER_LAYER,
    },
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def as_rng(seed: int | str | random.Random | None) -> random.Random:
    return seed if isinstance(seed, random.Random) else random.Random(seed)


def parse_platform(platform: str | dict) -> dict:
    """``"linux/arm64/v8"`` -> ``{"os": "linux", "architecture": "arm64", "variant": "v8"}``."""
    if isinstance(platform, dict):
        return dict(platform)
    parts = platform.split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"platform must be os/arch[/variant], not {platform!r}")
    result = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        result["variant"] = parts[2]
    return result


# -- content model -------------------------------------------------------------------------


class Blob:
    """A config or layer: bytes plus the media type it is referenced with."""

    def __init__(self, data: bytes, media_type: str, *, diff_id: str | None = None,
                 annotations: dict | None = None) -> None:
        self.data = data
        self.media_type = media_type
        self.diff_id = diff_id
        self.annotations = annotations
        self.digest = sha256_digest(data)
        self.size = len(data)

    def descriptor(self) -> dict:
        desc = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            desc["annotations"] = dict(self.annotations)
        return desc

    def __repr__(self) -> str:
        return f"Blob({self.digest[:19]}, {self.media_type}, {self.size} B)"


@dataclass
class Manifest:
    """An image manifest (``blobs`` = config + layers) or an index (``children``).

    ``platform`` and ``annotations`` are how the manifest is described when it is a child of
    an index.
    """

    media_type: str
    payload: bytes
    blobs: list[Blob] = field(default_factory=list)
    children: list[Manifest] = field(default_factory=list)
    platform: dict | None = None
    annotations: dict | None = None

    @property
    def digest(self) -> str:
        return sha256_digest(self.payload)

    @property
    def size(self) -> int:
        return len(self.payload)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def is_attestation(self) -> bool:
        return (self.annotations or {}).get(ATTESTATION_TYPE_KEY) == ATTESTATION_TYPE

    @property
    def config(self) -> Blob | None:
        return self.blobs[0] if self.blobs else None

    @property
    def layers(self) -> list[Blob]:
        return self.blobs[1:]

    def json(self) -> dict:
        return json.loads(self.payload)

    def descriptor(self) -> dict:
        desc = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            desc["platform"] = dict(self.platform)
        if self.annotations:
            desc["annotations"] = dict(self.annotations)
        return desc

    def walk(self):
        """This manifest and, for an index, every child (depth first)."""
        yield self
        for child in self.children:
            yield from child.walk()

    def __repr__(self) -> str:
        kind = "index" if self.is_index else "image"
        return f"Manifest({kind} {self.digest[:19]}, {len(self.children)} children, {len(self.blobs)} blobs)"


# -- builders ------------------------------------------------------------------------------


def make_layer(seed=None, *, size: int = 2048, media_type: str = OCI_LAYER) -> Blob:
    """A real tar.gz with one file of random bytes (random, so gzip cannot shrink it)."""
    rng = as_rng(seed)
    content = rng.randbytes(size)
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name=f"data/{rng.getrandbits(64):016x}.bin")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = tar_buffer.getvalue()
    # mtime=0: the same seed gives the same digest.
    compressed = gzip.compress(tar_bytes, mtime=0)
    return Blob(compressed, media_type, diff_id=sha256_digest(tar_bytes))


def make_image(
    seed=None,
    *,
    flavor: str = "oci",
    platform: str | dict = "linux/amd64",
    layers: int = 2,
    base_layers: list[Blob] | tuple = (),
    layer_size: int = 2048,
) -> Manifest:
    """A single-platform image: ``base_layers`` (shared on purpose) plus ``layers`` new ones."""
    rng = as_rng(seed)
    types = FLAVORS[flavor]
    plat = parse_platform(platform)
    own = [make_layer(rng, size=layer_size, media_type=types["layer"]) for _ in range(layers)]
    # A base layer keeps its bytes; only its media type follows the image flavour.
    all_layers = [Blob(b.data, types["layer"], diff_id=b.diff_id) for b in base_layers] + own
    config_doc = {
        "architecture": plat["architecture"],
        "os": plat["os"],
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"],
                   "Labels": {"regwarden.test.nonce": f"{rng.getrandbits(64):016x}"}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in all_layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(all_layers))],
    }
    if "variant" in plat:
        config_doc["variant"] = plat["variant"]
    config = Blob(canonical_json(config_doc), types["config"])
    doc = {
        "schemaVersion": 2,
        "mediaType": types["manifest"],
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in all_layers],
    }
    return Manifest(types["manifest"], canonical_json(doc), blobs=[config, *all_layers], platform=plat)


def make_attestation(subject: Manifest, seed=None) -> Manifest:
    """A BuildKit-style attestation manifest for ``subject`` (an in-toto layer, platform unknown)."""
    rng = as_rng(seed)
    statement = canonical_json({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": "_", "digest": {"sha256": subject.digest.split(":", 1)[1]}}],
        "predicate": {"nonce": f"{rng.getrandbits(64):016x}"},
    })
    layer = Blob(statement, IN_TOTO, annotations={"in-toto.io/predicate-type": "https://spdx.dev/Document"})
    config = Blob(canonical_json({
        "architecture": "unknown", "os": "unknown", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    }), OCI_CONFIG)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    }
    return Manifest(
        OCI_MANIFEST,
        canonical_json(doc),
        blobs=[config, layer],
        platform={"os": "unknown", "architecture": "unknown"},
        annotations={ATTESTATION_DIGEST_KEY: subject.digest, ATTESTATION_TYPE_KEY: ATTESTATION_TYPE},
    )


def make_index(children: list[Manifest], *, flavor: str = "oci", annotations: dict | None = None) -> Manifest:
    """An OCI index (``flavor="oci"``) or a Docker manifest list (``"docker"``) of ``children``."""
    media_type = FLAVORS[flavor]["index"]
    doc = {"schemaVersion": 2, "mediaType": media_type,
           "manifests": [child.descriptor() for child in children]}
    if annotations:
        doc["annotations"] = dict(annotations)
    return Manifest(media_type, canonical_json(doc), children=list(children))


def make_multiarch(
    seed=None,
    *,
    flavor: str = "oci",
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64/v8"),
    attestations: bool | None = None,
    base_layers: list[Blob] | tuple = (),
    layers: int = 2,
    extra_children: list[Manifest] | tuple = (),
) -> Manifest:
    """A multi-platform image as buildx makes it.

    OCI flavour: one image per platform plus, by default, one attestation manifest per image
    (what ``docker buildx build --provenance`` pushes). Docker flavour: a manifest list without
    attestations. ``extra_children`` are appended as they are (to share children between
    indexes on purpose).
    """
    rng = as_rng(seed)
    if attestations is None:
        attestations = flavor == "oci"
    images = [make_image(rng, flavor=flavor, platform=p, layers=layers, base_layers=base_layers)
              for p in platforms]
    children = list(images) + list(extra_children)
    if attestations:
        children += [make_attestation(image, rng) for image in images]
    return make_index(children, flavor=flavor)


# -- HTTP client ---------------------------------------------------------------------------


class RegistryHTTPError(RuntimeError):
    def __init__(self, method: str, url: str, response: requests.Response) -> None:
        self.status = response.status_code
        self.body = response.text[:2000]
        super().__init__(f"{method} {url} -> {self.status}: {self.body}")


def read_body(response: requests.Response) -> tuple[bytes, str | None]:
    """All bytes the server really sent, and the error that cut the body short (if any).

    A registry whose descriptor cache outlives the blob data announces the full
    Content-Length and then sends nothing: that must be observable, not an exception.
    """
    chunks: list[bytes] = []
    error = None
    try:
        for chunk in response.raw.stream(65536, decode_content=False):
            chunks.append(chunk)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        response.close()
    return b"".join(chunks), error


@dataclass
class PullReport:
    """What a full pull (every platform of an index, every blob) ran into."""

    repo: str
    reference: str
    digest: str | None = None
    media_type: str | None = None
    manifests: int = 0
    blobs: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class RegistryClient:
    """A small registry v2 client (no auth: the test registries listen on 127.0.0.1 only)."""

    def __init__(self, url: str, *, timeout: float = 15.0, session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def _url(self, path: str) -> str:
        return f"{self.url}/v2/{path}"

    def _request(self, method: str, url: str, *, expect: tuple[int, ...], **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        response = self.session.request(method, url, **kwargs)
        if response.status_code not in expect:
            raise RegistryHTTPError(method, url, response)
        return response

    # -- blobs ---------------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        response = self.session.head(self._url(f"{repo}/blobs/{digest}"), timeout=self.timeout)
        return response.status_code == 200

    def get_blob(self, repo: str, digest: str) -> requests.Response:
        """The raw streamed response (any status); read it with :func:`read_body`."""
        return self.session.get(self._url(f"{repo}/blobs/{digest}"), stream=True, timeout=self.timeout)

    def upload_blob(self, repo: str, blob: Blob | bytes, *, chunked: bool = False,
                    chunk_size: int = 1024) -> str:
        """Upload bytes as a blob of ``repo``: POST then PUT (monolithic) or PATCH chunks + PUT."""
        data = blob.data if isinstance(blob, Blob) else blob
        digest = sha256_digest(data)
        start = self._request("POST", self._url(f"{repo}/blobs/uploads/"), expect=(202,))
        location = urljoin(self.url + "/", start.headers["Location"])
        if chunked:
            offset = 0
            while offset < len(data):
                piece = data[offset:offset + chunk_size]
                response = self._request(
                    "PATCH", location, expect=(202,), data=piece,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Range": f"{offset}-{offset + len(piece) - 1}"},
                )
                location = urljoin(self.url + "/", response.headers["Location"])
                offset += len(piece)
            body = b""
        else:
            body = data
        self._request(
            "PUT", location, expect=(201,), params={"digest": digest}, data=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        return digest

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; False (and the opened upload cancelled) when refused."""
        response = self._request(
            "POST", self._url(f"{repo}/blobs/uploads/"), expect=(201, 202),
            params={"mount": digest, "from": from_repo},
        )
        if response.status_code == 201:
            return True
        self.session.delete(urljoin(self.url + "/", response.headers["Location"]), timeout=self.timeout)
        return False

    # -- manifests -----------------------------------------------------------------------

    def put_manifest(self, repo: str, reference: str, payload: bytes, media_type: str) -> str:
        response = self._request(
            "PUT", self._url(f"{repo}/manifests/{reference}"), expect=(201,), data=payload,
            headers={"Content-Type": media_type},
        )
        return response.headers.get("Docker-Content-Digest") or sha256_digest(payload)

    def get_manifest(self, repo: str, reference: str, *, accept: str = MANIFEST_ACCEPT) -> requests.Response:
        """The raw streamed response (any status); read it with :func:`read_body`."""
        return self.session.get(
            self._url(f"{repo}/manifests/{reference}"), headers={"Accept": accept},
            stream=True, timeout=self.timeout,
        )

    def manifest_json(self, repo: str, reference: str) -> dict:
        response = self._request("GET", self._url(f"{repo}/manifests/{reference}"), expect=(200,),
                                 headers={"Accept": MANIFEST_ACCEPT})
        return response.json()

    def resolve(self, repo: str, reference: str) -> str:
        """Digest a tag points at (HEAD with the manifest Accept headers)."""
        response = self._request("HEAD", self._url(f"{repo}/manifests/{reference}"), expect=(200,),
                                 headers={"Accept": MANIFEST_ACCEPT})
        return response.headers["Docker-Content-Digest"]

    def delete_manifest(self, repo: str, digest: str) -> None:
        """API DELETE by digest (the registry needs ``storage.delete.enabled``)."""
        self._request("DELETE", self._url(f"{repo}/manifests/{digest}"), expect=(202,))

    # -- listing -------------------------------------------------------------------------

    def catalog(self, page_size: int = 1000) -> list[str]:
        repos: list[str] = []
        url = self._url(f"_catalog?n={page_size}")
        for _ in range(10_000):  # bounded: the Link header could loop on a broken server
            response = self._request("GET", url, expect=(200,))
            repos += response.json().get("repositories") or []
            link = response.links.get("next", {}).get("url")
            if not link:
                return repos
            url = urljoin(self.url + "/", link)
        raise RuntimeError("catalog pagination did not end")

    def tags(self, repo: str) -> list[str]:
        """Tag names (empty when the repo has none or is unknown)."""
        response = self.session.get(self._url(f"{repo}/tags/list"), timeout=self.timeout)
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise RegistryHTTPError("GET", response.url, response)
        return sorted(response.json().get("tags") or [])

    # -- whole images --------------------------------------------------------------------

    def push(self, repo: str, manifest: Manifest, tag: str | None = None, *, chunked: bool = False) -> str:
        """Push blobs, then children by digest, then the manifest under ``tag`` (or its digest).

        Blobs the repo already has are skipped (as docker does after a HEAD).
        """
        for child in manifest.children:
            self.push(repo, child, None, chunked=chunked)
        for blob in manifest.blobs:
            if not self.blob_exists(repo, blob.digest):
                self.upload_blob(repo, blob, chunked=chunked)
        digest = self.put_manifest(repo, tag or manifest.digest, manifest.payload, manifest.media_type)
        if digest != manifest.digest:
            raise RuntimeError(f"registry stored {digest}, expected {manifest.digest}")
        return digest

    def pull(self, repo: str, reference: str) -> PullReport:
        """Fetch a manifest and everything it references (all platforms), verifying digests."""
        report = PullReport(repo, reference)
        self._pull_manifest(repo, reference, report, top=True)
        return report

    def _pull_manifest(self, repo: str, reference: str, report: PullReport, *, top: bool = False) -> None:
        response = self.get_manifest(repo, reference)
        body, error = read_body(response)
        report.manifests += 1
        where = f"{repo}/manifests/{reference}"
        if response.status_code != 200:
            report.problems.append(f"{where}: HTTP {response.status_code} {body[:200]!r}")
            return
        if error:
            report.problems.append(f"{where}: {error}")
            return
        digest = sha256_digest(body)
        if reference.startswith("sha256:") and digest != reference:
            report.problems.append(f"{where}: content hashes to {digest}")
            return
        try:
            doc = json.loads(body)
        except ValueError:
            report.problems.append(f"{where}: invalid JSON")
            return
        if top:
            report.digest = digest
            report.media_type = response.headers.get("Content-Type")
        if doc.get("manifests") is not None:
            for child in doc["manifests"]:
                self._pull_manifest(repo, child["digest"], report)
            return
        for desc in [doc.get("config"), *(doc.get("layers") or [])]:
            if desc:
                self._pull_blob(repo, desc, report)

    def _pull_blob(self, repo: str, desc: dict, report: PullReport) -> None:
        response = self.get_blob(repo, desc["digest"])
        body, error = read_body(response)
        report.blobs += 1
        where = f"{repo}/blobs/{desc['digest']}"
        if response.status_code != 200:
            report.problems.append(f"{where}: HTTP {response.status_code}")
        elif error or len(body) != desc.get("size", len(body)):
            report.problems.append(f"{where}: {len(body)} of {desc.get('size')} bytes ({error})")
        elif sha256_digest(body) != desc["digest"]:
            report.problems.append(f"{where}: content hashes to {sha256_digest(body)}")
