#!/usr/bin/env python3
"""Seeded generator of realistic distribution 2.8 storage trees for the scanner benchmark.

The tree is written straight to disk with plain os calls (no registry process): several
registries (`private` plus the pull-through caches `dockerhub`, `ghcr`, `quay`), nested repo
names, base layers shared by many repos, OCI indexes with amd64/arm64 and attestation children,
Docker manifest lists, tags with current link and index history, upload leftovers, and damage
of every class the scanners report, injected at a small known rate.

Next to the tree (`<out>/data`) it writes `<out>/damage.json`: what was injected and, computed
from the in-memory model with the rules of docs/design.md section 2, the exact findings each scanner
should report. damage.json is written last, so its presence marks a complete tree.

Usage: generate_tree.py --links 100000 [--seed 1] [--out DIR] [--workers 2]
Without --out the tree goes to .cache/bench/tree-l<links>-s<seed>-v<version>/ and an
existing complete tree with the same parameters is reused.
"""

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import time

# Bump when the generated content changes, so cached trees are not reused across versions.
GENERATOR_VERSION = 2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CACHE_DIR = os.path.join(REPO_ROOT, ".cache", "bench")

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
V2 = os.path.join("docker", "registry", "v2")

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_INTOTO = "application/vnd.in-toto+json"
INDEX_MEDIA_TYPES = (MT_DOCKER_LIST, MT_OCI_INDEX)

# Share of the link budget per registry. The caches hold partial indexes by design.
REGISTRY_SHARES = (("private", 0.40), ("dockerhub", 0.35), ("ghcr", 0.15), ("quay", 0.10))
CACHE_REGISTRIES = ("dockerhub", "ghcr", "quay")

PLATFORMS = {
    "amd64": {"architecture": "amd64", "os": "linux"},
    "arm64": {"architecture": "arm64", "os": "linux", "variant": "v8"},
    "arm/v7": {"architecture": "arm", "os": "linux", "variant": "v7"},
    "ppc64le": {"architecture": "ppc64le", "os": "linux"},
    "s390x": {"architecture": "s390x", "os": "linux"},
}
ATTESTATION_PLATFORM = {"architecture": "unknown", "os": "unknown"}

# Base image families: (name, parent family, own layer count). Per platform, per registry.
BASE_FAMILIES = (
    ("debian-12", None, 1), ("ubuntu-22.04", None, 1), ("alpine-3.19", None, 1),
    ("distroless-static", None, 2), ("python-3.11", "debian-12", 3), ("python-3.12", "debian-12", 3),
    ("node-20", "debian-12", 3), ("golang-1.22", "debian-12", 4), ("openjdk-21", "ubuntu-22.04", 2),
    ("nginx-1.25", "debian-12", 5), ("python-3.11-alpine", "alpine-3.19", 3),
    ("node-20-alpine", "alpine-3.19", 2), ("ruby-3.3", "debian-12", 3), ("php-8.3", "debian-12", 6),
    ("dotnet-8", "ubuntu-22.04", 3), ("rust-1.77", "debian-12", 2),
)

TEAMS = ("platform", "payments", "search", "data", "ml", "web", "mobile", "infra", "security",
         "identity", "billing", "growth", "ops", "qa", "edge", "media", "ads", "risk")
APPS = ("api", "worker", "gateway", "frontend", "scheduler", "indexer", "exporter", "proxy", "auth",
        "ledger", "notifier", "ingest", "etl", "dashboard", "cron", "migrator", "renderer", "mailer",
        "search", "cache", "router", "feeds", "uploader", "thumbnailer", "reporter", "sync")
SUBGROUPS = ("backend", "tools", "jobs", "internal", "experimental")
UPSTREAM_ORGS = ("bitnami", "grafana", "prom", "hashicorp", "jetstack", "fluxcd", "cilium", "coreos",
                 "kiwigrid", "linuxserver", "elastic", "confluentinc", "minio", "traefik", "argoproj")
UPSTREAM_NAMES = ("redis", "postgres", "nginx", "python", "node", "golang", "alpine", "debian",
                  "busybox", "grafana", "prometheus", "alertmanager", "vault", "consul", "loki",
                  "tempo", "kafka", "zookeeper", "mysql", "mariadb", "memcached", "rabbitmq",
                  "traefik", "haproxy", "envoy", "cert-manager-controller", "kube-state-metrics",
                  "node-exporter", "etcd", "coredns", "pause", "argocd", "minio", "mongo",
                  "elasticsearch", "kibana", "fluent-bit", "telegraf", "influxdb", "caddy")

GARBAGE_LINK_CONTENTS = (b"garbage\n", b"sha256:" + b"z" * 64, b"\x00\x01\xfe\xff", b"sha256:abc",
                         b"md5:d41d8cd98f00b204e9800998ecf8427e")


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def filler_bytes(key, size):
    """Deterministic blob content of `size` bytes derived from `key`."""
    block = hashlib.sha256(key).digest()
    return (block * (size // 32 + 1))[:size]


class Blob:
    __slots__ = ("content", "key", "kind", "size", "state")

    def __init__(self, kind, size, key=None, content=None):
        self.kind = kind          # layer | config | manifest | intoto
        self.size = size
        self.key = key            # layers: content is regenerated from the key when written
        self.content = content    # JSON blobs keep their bytes
        self.state = "ok"         # ok | data_gone | dir_gone | empty | truncated

    def data(self):
        return self.content if self.content is not None else filler_bytes(self.key, self.size)


class Manifest:
    __slots__ = ("children", "config", "layers", "media_type")

    def __init__(self, media_type, config=None, layers=(), children=()):
        self.media_type = media_type
        self.config = config
        self.layers = layers
        self.children = children  # (hex, platform dict, attestation bool)

    @property
    def is_index(self):
        return self.media_type in INDEX_MEDIA_TYPES


class Tag:
    __slots__ = ("current", "history", "state")

    def __init__(self, current):
        self.current = current
        self.state = "ok"         # ok | empty | garbage
        self.history = [current]


class Repo:
    __slots__ = ("bad_dirs", "has_tags_dir", "layers", "name", "revisions", "tags", "uploads")

    def __init__(self, name):
        self.name = name
        # hex -> ok | empty | garbage:<n> | wrong ; revisions also: file_removed (empty dir left)
        self.layers = {}
        self.revisions = {}
        self.tags = {}
        self.has_tags_dir = True
        self.uploads = []         # (uuid, kind) kind: empty | started | partial
        self.bad_dirs = []        # (area "layer"|"revision", dir name, link content)

    def link_count(self):
        count = sum(1 for s in self.revisions.values() if s != "file_removed")
        count += len(self.layers) + len(self.bad_dirs)
        for tag in self.tags.values():
            count += 1 + len(tag.history)
        return count


class Registry:
    def __init__(self, name):
        self.name = name
        self.blobs = {}
        self.manifests = {}
        self.repos = []
        self.repo_names = set()
        self.base_layers = {}     # (family, platform) -> [hex]
        self.counter = 0

    def next_key(self, seed, what):
        self.counter += 1
        return b"%d:%s:%s:%d" % (seed, self.name.encode(), what.encode(), self.counter)

    def add_repo(self, name):
        base, n = name, 2
        while name in self.repo_names:
            name = "%s-%d" % (base, n)
            n += 1
        self.repo_names.add(name)
        repo = Repo(name)
        self.repos.append(repo)
        return repo


class Generator:
    """Builds the in-memory model of all registries."""

    def __init__(self, seed, links):
        self.seed = seed
        self.links = links
        self.rng = random.Random(seed)
        self.registries = []

    # --- blobs -------------------------------------------------------------------------------

    def layer_blob(self, reg, what="layer", store=True):
        rng = self.rng
        size = int(math.exp(rng.uniform(math.log(8), math.log(4096))))
        key = reg.next_key(self.seed, what)
        data = filler_bytes(key, size)
        hexd = sha256_hex(data)
        if store:
            reg.blobs[hexd] = Blob("layer", size, key=key)
        return hexd, size

    def json_blob(self, reg, obj, kind, store=True, indent=None):
        data = json.dumps(obj, indent=indent, separators=None if indent else (",", ":")).encode()
        hexd = sha256_hex(data)
        if store:
            reg.blobs[hexd] = Blob(kind, len(data), content=data)
        return hexd, len(data)

    def base_layers(self, reg, family, platform):
        key = (family, platform)
        if key not in reg.base_layers:
            _name, parent, own = next(f for f in BASE_FAMILIES if f[0] == family)
            layers = list(self.base_layers(reg, parent, platform)) if parent else []
            for _ in range(own):
                layers.append(self.layer_blob(reg, "base"))
            reg.base_layers[key] = layers
        return reg.base_layers[key]

    def pick_family(self):
        # Popularity falls off like a Zipf law: a few bases are shared by most repos.
        weights = [1.0 / (i + 1) for i in range(len(BASE_FAMILIES))]
        return self.rng.choices(BASE_FAMILIES, weights)[0][0]

    # --- manifests ---------------------------------------------------------------------------

    def image(self, reg, platform, layers, oci, store=True, labels=None):
        """An image manifest over `layers` [(hex, size)], with a fresh config. Returns (hex, size)."""
        rng = self.rng
        arch = PLATFORMS[platform]
        diff_ids = ["sha256:" + sha256_hex(b"diff" + h.encode()) for h, _ in layers]
        config_obj = {
            "architecture": arch["architecture"], "os": arch["os"],
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                               "BUILD_ID=%d" % rng.randrange(10**9)],
                       "Cmd": ["/app/run"], "WorkingDir": "/app", "Labels": labels or {}},
            "created": "2024-%02d-%02dT%02d:%02d:%02dZ" % (
                rng.randint(1, 12), rng.randint(1, 28), rng.randrange(24), rng.randrange(60),
                rng.randrange(60)),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        if "variant" in arch:
            config_obj["variant"] = arch["variant"]
        cfg_hex, cfg_size = self.json_blob(reg, config_obj, "config", store=store)
        layer_mt = MT_OCI_LAYER if oci else MT_DOCKER_LAYER
        obj = {
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG if oci else MT_DOCKER_CONFIG,
                       "size": cfg_size, "digest": "sha256:" + cfg_hex},
            "layers": [{"mediaType": layer_mt, "size": s, "digest": "sha256:" + h} for h, s in layers],
        }
        hexd, size = self.json_blob(reg, obj, "manifest", store=store, indent=None if oci else 3)
        if store:
            reg.manifests[hexd] = Manifest(obj["mediaType"], cfg_hex, tuple(h for h, _ in layers))
        return hexd, size

    def attestation(self, reg, subject_hex):
        """A buildx attestation manifest (in-toto SBOM and provenance) for image `subject_hex`."""
        rng = self.rng
        layers = []
        for predicate in ("https://spdx.dev/Document", "https://slsa.dev/provenance/v0.2")[:rng.randint(1, 2)]:
            statement = {"_type": "https://in-toto.io/Statement/v0.1", "predicateType": predicate,
                         "subject": [{"name": "pkg:docker/app", "digest": {"sha256": subject_hex}}],
                         "predicate": {"nonce": rng.randrange(10**12)}}
            h, s = self.json_blob(reg, statement, "intoto")
            layers.append((h, s, predicate))
        cfg_hex, cfg_size = self.json_blob(
            reg, {"architecture": "unknown", "os": "unknown", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + h for h, _, _ in layers]}},
            "config")
        obj = {
            "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": "sha256:" + cfg_hex, "size": cfg_size},
            "layers": [{"mediaType": MT_INTOTO, "digest": "sha256:" + h, "size": s,
                        "annotations": {"in-toto.io/predicate-type": p}} for h, s, p in layers],
        }
        hexd, size = self.json_blob(reg, obj, "manifest")
        reg.manifests[hexd] = Manifest(MT_OCI_MANIFEST, cfg_hex, tuple(h for h, _, _ in layers))
        return hexd, size

    def index(self, reg, children, oci):
        """children: [(hex, size, platform dict, attestation_of hex or None)]."""
        entries = []
        for hexd, size, platform, attests in children:
            entry = {"mediaType": MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST,
                     "digest": "sha256:" + hexd, "size": size, "platform": platform}
            if attests:
                entry["annotations"] = {"vnd.docker.reference.digest": "sha256:" + attests,
                                        "vnd.docker.reference.type": "attestation-manifest"}
            entries.append(entry)
        obj = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX if oci else MT_DOCKER_LIST,
               "manifests": entries}
        hexd, size = self.json_blob(reg, obj, "manifest", indent=None if oci else 3)
        reg.manifests[hexd] = Manifest(
            obj["mediaType"], children=tuple((h, p, a is not None) for h, _, p, a in children))
        return hexd, size

    def link_manifest(self, reg, repo, hexd):
        """Revision link for a stored manifest plus layer links for its config and layers."""
        repo.revisions[hexd] = "ok"
        man = reg.manifests[hexd]
        if man.config:
            repo.layers[man.config] = "ok"
        for h in man.layers:
            repo.layers[h] = "ok"

    # --- registries --------------------------------------------------------------------------

    def build(self):
        for name, share in REGISTRY_SHARES:
            reg = Registry(name)
            self.registries.append(reg)
            budget = int(self.links * share)
            used = 0
            while used < budget:
                repo = self.private_repo(reg) if name == "private" else self.cache_repo(reg)
                used += repo.link_count()
        return self.registries

    def private_repo_name(self, reg):
        rng = self.rng
        roll = rng.random()
        if roll < 0.05:
            return rng.choice(APPS)
        if roll < 0.25:
            return "%s/%s/%s" % (rng.choice(TEAMS), rng.choice(SUBGROUPS), rng.choice(APPS))
        return "%s/%s" % (rng.choice(TEAMS), rng.choice(APPS))

    def private_repo(self, reg):
        rng = self.rng
        repo = reg.add_repo(self.private_repo_name(reg))
        roll = rng.random()
        if roll < 0.02:
            # A push that never completed: the repo exists only through its upload dir.
            repo.uploads.append(("%032x" % rng.getrandbits(128), rng.choice(("empty", "started", "partial"))))
            return repo
        if roll < 0.12:
            for _ in range(rng.randint(1, 3)):
                repo.uploads.append(("%032x" % rng.getrandbits(128), rng.choice(("empty", "started", "partial"))))
        style = rng.choices(("oci", "list", "single"), (0.55, 0.15, 0.30))[0]
        family = self.pick_family()
        if style == "oci":
            platforms = ["amd64", "arm64"]
        elif style == "list":
            platforms = ["amd64", "arm64"] + (["arm/v7"] if rng.random() < 0.5 else [])
        else:
            platforms = ["amd64"]
        builds = min(80, 1 + int(rng.lognormvariate(2.0, 0.8)))
        deps = {}
        build_digests = []
        major, minor = rng.randint(0, 4), rng.randint(0, 20)
        for b in range(builds):
            children = []
            for platform in platforms:
                layers = list(self.base_layers(reg, family, platform))
                if platform not in deps or rng.random() < 0.3:
                    deps[platform] = self.layer_blob(reg, "deps")
                layers.append(deps[platform])
                layers.extend(self.layer_blob(reg, "app") for _ in range(rng.randint(1, 3)))
                if rng.random() < 0.04:
                    layers.append(self.empty_layer(reg))
                img_hex, img_size = self.image(reg, platform, layers, oci=(style == "oci"),
                                               labels={"org.opencontainers.image.source": repo.name})
                self.link_manifest(reg, repo, img_hex)
                children.append((img_hex, img_size, PLATFORMS[platform], None))
            if style == "oci":
                for img_hex, _, _, _ in list(children):
                    att_hex, att_size = self.attestation(reg, img_hex)
                    self.link_manifest(reg, repo, att_hex)
                    children.append((att_hex, att_size, ATTESTATION_PLATFORM, img_hex))
            if style == "single":
                top = children[0][0]
            else:
                top, _ = self.index(reg, children, oci=(style == "oci"))
                repo.revisions[top] = "ok"
            build_digests.append(top)
            repo.tags["v%d.%d.%d" % (major, minor, b)] = Tag(top)
            if rng.random() < 0.2:
                repo.tags["sha-%07x" % rng.getrandbits(28)] = Tag(top)
        latest = Tag(build_digests[-1])
        latest.history = list(build_digests)
        repo.tags["latest"] = latest
        if rng.random() < 0.3:
            main = Tag(build_digests[-1])
            main.history = build_digests[-min(len(build_digests), 5):]
            repo.tags["main"] = main
        if rng.random() < 0.3:
            # The old cleanup script rmtree'd old version tags; their revisions stay.
            keep = rng.randint(3, 10)
            versions = [t for t in repo.tags if t.startswith("v")]
            for tag in versions[:-keep]:
                del repo.tags[tag]
        if rng.random() < 0.04:
            # All tags removed at once: revisions without a tags dir (garbage-collect aborts on it).
            repo.tags.clear()
            repo.has_tags_dir = False
        return repo

    def empty_layer(self, reg):
        if EMPTY_SHA256 not in reg.blobs:
            reg.blobs[EMPTY_SHA256] = Blob("layer", 0, content=b"")
        return EMPTY_SHA256, 0

    def cache_repo_name(self, reg):
        rng = self.rng
        if reg.name == "dockerhub":
            if rng.random() < 0.55:
                return "library/" + rng.choice(UPSTREAM_NAMES)
            return "%s/%s" % (rng.choice(UPSTREAM_ORGS), rng.choice(UPSTREAM_NAMES))
        if reg.name == "ghcr" and rng.random() < 0.4:
            return "%s/%s/%s" % (rng.choice(UPSTREAM_ORGS), rng.choice(SUBGROUPS), rng.choice(UPSTREAM_NAMES))
        return "%s/%s" % (rng.choice(UPSTREAM_ORGS), rng.choice(UPSTREAM_NAMES))

    def cache_repo(self, reg):
        """A pull-through cache repo: only what clients pulled is stored (mostly amd64)."""
        rng = self.rng
        repo = reg.add_repo(self.cache_repo_name(reg))
        family = self.pick_family()
        versions = min(40, 1 + int(rng.lognormvariate(1.5, 0.9)))
        multi = rng.random() < 0.75
        with_attestations = multi and rng.random() < (0.3 if reg.name == "ghcr" else 0.1)
        oci = with_attestations or rng.random() < 0.4
        upstream = ["amd64", "arm64"] + [p for p in ("arm/v7", "ppc64le", "s390x") if rng.random() < 0.15]
        pulls_arm = rng.random() < 0.4
        tops = []
        for v in range(versions):
            children = []
            for platform in upstream if multi else ["amd64"]:
                pulled = platform == "amd64" or (platform == "arm64" and pulls_arm) or rng.random() < 0.03
                layers = list(self.base_layers(reg, family, platform)) if pulled else []
                layers.extend(self.layer_blob(reg, "upper", store=pulled) for _ in range(rng.randint(1, 4)))
                img_hex, img_size = self.image(reg, platform, layers, oci=oci, store=pulled)
                if pulled:
                    self.link_manifest(reg, repo, img_hex)
                children.append((img_hex, img_size, PLATFORMS[platform], None))
            if with_attestations:
                for img_hex, _, _, _ in list(children):
                    # Attestations are never pulled through a cache: only their digest is known.
                    att = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST, "nonce": rng.randrange(10**12),
                           "subject": img_hex}
                    att_hex, att_size = self.json_blob(reg, att, "manifest", store=False)
                    children.append((att_hex, att_size, ATTESTATION_PLATFORM, img_hex))
            if multi:
                top, _ = self.index(reg, children, oci=oci)
                repo.revisions[top] = "ok"
            else:
                top = children[0][0]
            tops.append(top)
            repo.tags["%d.%d.%d" % (rng.randint(1, 9), rng.randint(0, 30), v)] = Tag(top)
        latest = Tag(tops[-1])
        latest.history = tops[-min(len(tops), 3):]
        repo.tags["latest"] = latest
        return repo


# --- damage ----------------------------------------------------------------------------------

class Damager:
    """Injects each damage class at `count` sites, keeping the sites of different classes apart."""

    def __init__(self, registries, rng, count):
        self.registries = registries
        self.rng = rng
        self.count = count
        self.touched_blobs = set()      # (registry, hex)
        self.touched_links = set()      # (registry, repo, hex)
        self.touched_tags = set()       # (registry, repo, tag)
        self.injected = {}
        self._index_children = None
        self._tag_targets = None
        self._refcount = None
        self._weights = {}

    # Helpers ----------------------------------------------------------------------------------

    def record(self, cls, **site):
        self.injected.setdefault(cls, []).append(site)

    def weighted_registry(self, names=None):
        """A registry, chosen in proportion to its layer links."""
        if names not in self._weights:
            regs = [r for r in self.registries if names is None or r.name in names]
            self._weights[names] = (regs, [sum(len(repo.layers) for repo in r.repos) + 1 for r in regs])
        regs, weights = self._weights[names]
        return self.rng.choices(regs, weights)[0]

    def index_children(self, reg):
        """hex -> True for every manifest that is a child of some index in the registry."""
        if self._index_children is None:
            self._index_children = {}
            for r in self.registries:
                self._index_children[r.name] = {
                    c for m in r.manifests.values() if m.is_index for c, _, _ in m.children}
        return self._index_children[reg.name]

    def tag_targets(self, reg, repo):
        # Ordered (not a set): picks from it must not depend on string hash randomization.
        return dict.fromkeys(t.current for t in repo.tags.values())

    def refcount(self, reg):
        """How many manifests reference each config/layer blob (GC marks blobs through them)."""
        if self._refcount is None:
            self._refcount = {}
            for r in self.registries:
                counts = {}
                for m in r.manifests.values():
                    for h in ((m.config,) if m.config else ()) + m.layers:
                        counts[h] = counts.get(h, 0) + 1
                self._refcount[r.name] = counts
        return self._refcount[reg.name]

    def tries(self):
        return range(self.count * 200)

    def pick_layer_link(self, tagged_only=False):
        """A healthy layer link (its blob healthy), preferring ones a tagged image references."""
        rng = self.rng
        for _ in self.tries():
            reg = self.weighted_registry()
            repo = rng.choice(reg.repos)
            if not repo.layers:
                continue
            if tagged_only:
                tops = [t.current for t in repo.tags.values()]
                if not tops:
                    continue
                man = reg.manifests.get(rng.choice(tops))
                if man is None:
                    continue
                if man.is_index:
                    stored = [c for c, _, _ in man.children if c in reg.manifests and c in repo.revisions]
                    if not stored:
                        continue
                    man = reg.manifests[rng.choice(stored)]
                hexd = rng.choice((man.config, *man.layers))
            else:
                hexd = rng.choice(list(repo.layers))
            if hexd == EMPTY_SHA256 or repo.layers.get(hexd) != "ok":
                continue
            blob = reg.blobs.get(hexd)
            if blob is None or blob.state != "ok" or (reg.name, hexd) in self.touched_blobs:
                continue
            if (reg.name, repo.name, hexd) in self.touched_links:
                continue
            self.touched_links.add((reg.name, repo.name, hexd))
            return reg, repo, hexd
        raise RuntimeError("no healthy layer link left to damage")

    def pick_data_blob(self, names=None):
        rng = self.rng
        for _ in self.tries():
            reg = self.weighted_registry(names)
            repo = rng.choice(reg.repos)
            if not repo.layers:
                continue
            hexd = rng.choice(list(repo.layers))
            blob = reg.blobs.get(hexd)
            if hexd == EMPTY_SHA256 or blob is None or blob.state != "ok" or blob.kind == "manifest":
                continue
            if (reg.name, hexd) in self.touched_blobs:
                continue
            if any((reg.name, r.name, hexd) in self.touched_links for r in reg.repos if hexd in r.layers):
                continue
            self.touched_blobs.add((reg.name, hexd))
            return reg, hexd
        raise RuntimeError("no healthy blob left to damage")

    def pick_index_child(self, names=("private",), need_tagged=False):
        """(reg, repo, index hex, child hex) with a healthy stored child and no layer link for it."""
        rng = self.rng
        for _ in self.tries():
            reg = self.weighted_registry(names)
            repo = rng.choice(reg.repos)
            if need_tagged:
                candidates = list(self.tag_targets(reg, repo))
            else:
                candidates = [h for h, s in repo.revisions.items() if s == "ok"]
            if not candidates:
                continue
            top = rng.choice(candidates)
            man = reg.manifests.get(top)
            if man is None or not man.is_index or repo.revisions.get(top) != "ok":
                continue
            if (reg.name, repo.name, top) in self.touched_links:
                continue
            stored = [c for c, _, _ in man.children if repo.revisions.get(c) == "ok"
                      and c not in repo.layers and (reg.name, repo.name, c) not in self.touched_links]
            if not stored:
                continue
            child = rng.choice(stored)
            self.touched_links.add((reg.name, repo.name, child))
            return reg, repo, top, child
        raise RuntimeError("no index child left to damage")

    # Classes ----------------------------------------------------------------------------------

    def inject_all(self):
        rng = self.rng
        n = self.count

        # Orphan layer links: blob data deleted (cache expiry, manual cleanup). Caches weigh double.
        for i in range(n):
            reg, hexd = self.pick_data_blob(None if i % 3 else CACHE_REGISTRIES)
            state = "data_gone" if i % 2 else "dir_gone"
            reg.blobs[hexd].state = state
            self.record("orphan_blob_" + state, registry=reg.name, digest="sha256:" + hexd,
                        linked_by=sum(1 for r in reg.repos if hexd in r.layers))

        # Zero-byte blob data.
        for _ in range(n):
            reg, hexd = self.pick_data_blob()
            reg.blobs[hexd].state = "empty"
            self.record("zero_byte_blob", registry=reg.name, digest="sha256:" + hexd)

        # Empty and garbage layer link files (half of them under a tagged image).
        for i in range(n):
            reg, repo, hexd = self.pick_layer_link(tagged_only=bool(i % 2))
            repo.layers[hexd] = "empty"
            self.record("empty_layer_link", registry=reg.name, repo=repo.name, digest="sha256:" + hexd)
        for i in range(n):
            reg, repo, hexd = self.pick_layer_link(tagged_only=bool(i % 2))
            variant = i % (len(GARBAGE_LINK_CONTENTS) + 1)
            repo.layers[hexd] = "wrong" if variant == len(GARBAGE_LINK_CONTENTS) else "garbage:%d" % variant
            self.record("garbage_layer_link", registry=reg.name, repo=repo.name, digest="sha256:" + hexd,
                        content=repo.layers[hexd])

        # Garbage revision links of index children.
        for i in range(n):
            reg, repo, top, child = self.pick_index_child()
            variant = i % (len(GARBAGE_LINK_CONTENTS) + 2)
            if variant == len(GARBAGE_LINK_CONTENTS):
                state = "wrong"
            elif variant == len(GARBAGE_LINK_CONTENTS) + 1:
                state = "empty"
            else:
                state = "garbage:%d" % variant
            repo.revisions[child] = state
            self.record("garbage_child_revision_link", registry=reg.name, repo=repo.name,
                        index_digest="sha256:" + top, child_digest="sha256:" + child, content=state)

        # Index children whose revision link was removed (API DELETE leaves the empty dir,
        # rmtree removes it), without and with a `_layers` link that keeps them servable.
        for i in range(n):
            reg, repo, top, child = self.pick_index_child()
            if i % 2:
                repo.revisions[child] = "file_removed"
            else:
                del repo.revisions[child]
            self.record("child_revision_removed", registry=reg.name, repo=repo.name,
                        index_digest="sha256:" + top, child_digest="sha256:" + child)
        for i in range(n):
            reg, repo, top, child = self.pick_index_child()
            if i % 2:
                repo.revisions[child] = "file_removed"
            else:
                del repo.revisions[child]
            repo.layers[child] = "ok"
            self.record("child_revision_removed_layer_fallback", registry=reg.name, repo=repo.name,
                        index_digest="sha256:" + top, child_digest="sha256:" + child)

        # garbage-collect --delete-untagged on a 2.8 registry: every child of a tagged index loses
        # its revision dir, and the blobs only those children referenced are swept. The child
        # manifest blobs survive; the `_layers` links stay (GC never removes them).
        for _ in range(max(1, n // 4)):
            reg, repo, top, _ = self.pick_index_child(need_tagged=True)
            refs = self.refcount(reg)
            swept = []
            for child, _, _ in reg.manifests[top].children:
                if repo.revisions.get(child) != "ok":
                    continue
                del repo.revisions[child]
                self.touched_links.add((reg.name, repo.name, child))
                man = reg.manifests[child]
                for h in ((man.config,) if man.config else ()) + man.layers:
                    blob = reg.blobs.get(h)
                    if refs.get(h) == 1 and blob is not None and blob.state == "ok":
                        blob.state = "dir_gone"
                        self.touched_blobs.add((reg.name, h))
                        swept.append("sha256:" + h)
            self.record("gc_swept_index_children", registry=reg.name, repo=repo.name,
                        index_digest="sha256:" + top, swept_blobs=len(swept))

        # Broken tags: current link empty or garbage.
        for i in range(n):
            for _ in self.tries():
                reg = self.weighted_registry()
                repo = rng.choice(reg.repos)
                if not repo.tags:
                    continue
                tag = rng.choice(list(repo.tags))
                if (reg.name, repo.name, tag) in self.touched_tags:
                    continue
                self.touched_tags.add((reg.name, repo.name, tag))
                repo.tags[tag].state = "empty" if i % 2 else "garbage"
                self.record("broken_tag_link", registry=reg.name, repo=repo.name, tag=tag,
                            content=repo.tags[tag].state)
                break

        # Broken tags: the tagged image manifest lost its revision dir (blob survives).
        for _ in range(n):
            for _ in self.tries():
                reg = self.weighted_registry()
                repo = rng.choice(reg.repos)
                if not repo.tags:
                    continue
                tag = rng.choice(list(repo.tags))
                target = repo.tags[tag].current
                man = reg.manifests.get(target)
                if (man is None or man.is_index or target in self.index_children(reg)
                        or repo.revisions.get(target) != "ok" or target in repo.layers
                        or (reg.name, repo.name, target) in self.touched_links):
                    continue
                del repo.revisions[target]
                self.touched_links.add((reg.name, repo.name, target))
                self.record("tag_target_revision_removed", registry=reg.name, repo=repo.name, tag=tag,
                            digest="sha256:" + target)
                break

        # Truncated manifest JSON: untagged single-platform revisions (not index children).
        for _ in range(n):
            for _ in self.tries():
                reg = self.weighted_registry(("private",))
                repo = rng.choice(reg.repos)
                revs = [h for h, s in repo.revisions.items() if s == "ok"]
                if not revs:
                    continue
                hexd = rng.choice(revs)
                man = reg.manifests.get(hexd)
                blob = reg.blobs.get(hexd)
                if (man is None or man.is_index or hexd in self.index_children(reg)
                        or hexd in self.tag_targets(reg, repo) or blob.state != "ok"
                        or (reg.name, hexd) in self.touched_blobs):
                    continue
                blob.state = "truncated"
                self.touched_blobs.add((reg.name, hexd))
                self.record("truncated_manifest", registry=reg.name, repo=repo.name, digest="sha256:" + hexd)
                break

        # Directory names that are not a digest, with a link file inside.
        for i in range(n):
            reg = self.weighted_registry()
            repo = rng.choice([r for r in reg.repos if r.layers])
            some = rng.choice(list(repo.layers))
            name = (some[:12], some + ".bak", some.upper(), "tmp-%08x" % rng.getrandbits(32), "latest")[i % 5]
            area = "revision" if i % 3 == 0 else "layer"
            if any(a == area and d == name for a, d, _ in repo.bad_dirs):
                continue
            repo.bad_dirs.append((area, name, b"sha256:" + some.encode()))
            self.record("non_digest_dir", registry=reg.name, repo=repo.name, kind=area, name=name)

        return self.injected


# --- expected findings -----------------------------------------------------------------------

def link_valid(state):
    return state == "ok"


def blob_present(reg, hexd):
    blob = reg.blobs.get(hexd)
    return blob is not None and blob.state not in ("data_gone", "dir_gone")


def manifest_servable(reg, repo, hexd):
    """docs/design.md: a revision link or a `_layers` link, plus blob data (that parses).

    2.8 falls back to the `_layers` link only when the revision link file does not exist:
    a garbage revision link is an error (500), not a reason to look further.
    """
    revision = repo.revisions.get(hexd)
    if revision in (None, "file_removed"):
        if not link_valid(repo.layers.get(hexd)):
            return False
    elif not link_valid(revision):
        return False
    blob = reg.blobs.get(hexd)
    return blob is not None and blob.state == "ok"


def compute_expected(registries):
    """Finding keys each scanner should report, from the model (the rules of docs/design.md section 2)."""
    exp = {k: [] for k in ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs",
                           "orphan_index_children", "broken_tags", "unservable_blobs",
                           "invalid_manifests")}
    cache_partial = 0
    for reg in registries:
        r = reg.name
        for hexd, blob in reg.blobs.items():
            if blob.state == "empty" and hexd != EMPTY_SHA256:
                exp["zero_byte_blobs"].append("%s|sha256:%s" % (r, hexd))
        for repo in reg.repos:
            for hexd, state in repo.layers.items():
                if state == "ok":
                    if not blob_present(reg, hexd):
                        exp["orphan_layer_links"].append("%s|%s|sha256:%s" % (r, repo.name, hexd))
                else:
                    exp["invalid_link_files"].append("%s|%s|layer|%s" % (r, repo.name, hexd))
            for hexd, state in repo.revisions.items():
                if state not in ("ok", "file_removed"):
                    exp["invalid_link_files"].append("%s|%s|revision|%s" % (r, repo.name, hexd))
            for area, name, _ in repo.bad_dirs:
                exp["invalid_link_files"].append("%s|%s|%s|%s" % (r, repo.name, area, name))

            # Index audit.
            for hexd, state in repo.revisions.items():
                if state == "ok" and reg.blobs[hexd].state == "truncated":
                    exp["invalid_manifests"].append("%s|%s|sha256:%s" % (r, repo.name, hexd))
            targets = {}
            for tag_name, tag in repo.tags.items():
                if tag.state != "ok" or not manifest_servable(reg, repo, tag.current):
                    exp["broken_tags"].append("%s|%s|%s" % (r, repo.name, tag_name))
                else:
                    targets[tag.current] = True
            indexes = {h for h, s in repo.revisions.items()
                       if s == "ok" and h in reg.manifests and reg.manifests[h].is_index}
            for top in sorted(indexes):
                if reg.blobs[top].state != "ok":
                    continue
                for child, _, _ in reg.manifests[top].children:
                    if not manifest_servable(reg, repo, child):
                        exp["orphan_index_children"].append(
                            "%s|%s|sha256:%s|sha256:%s" % (r, repo.name, top, child))
                        if reg.name in CACHE_REGISTRIES and child not in reg.blobs:
                            cache_partial += 1
            in_scope = set()
            for top in targets:
                man = reg.manifests[top]
                if man.is_index:
                    in_scope.update(c for c, _, _ in man.children if manifest_servable(reg, repo, c))
                else:
                    in_scope.add(top)
            bad = set()
            for hexd in in_scope:
                man = reg.manifests[hexd]
                for h in ((man.config,) if man.config else ()) + man.layers:
                    blob = reg.blobs.get(h)
                    data_ok = blob is not None and blob.state == "ok"
                    if not link_valid(repo.layers.get(h)) or not data_ok:
                        bad.add(h)
            exp["unservable_blobs"].extend("%s|%s|sha256:%s" % (r, repo.name, h) for h in bad)
    for key in exp:
        exp[key].sort()
    return exp, cache_partial


# --- writing ---------------------------------------------------------------------------------

WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def write_file(path, data):
    fd = os.open(path, WRITE_FLAGS, 0o644)
    try:
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)


def link_bytes(hexd, state):
    if state == "ok":
        return b"sha256:" + hexd.encode()
    if state == "empty":
        return b""
    if state == "wrong":
        return b"sha256:" + sha256_hex(hexd.encode()).encode()
    return GARBAGE_LINK_CONTENTS[int(state.split(":")[1])]


def registry_root(out, reg):
    return os.path.join(out, reg.name, V2)


def prepare_dirs(out, registries):
    """Creates the shared parent directories, so that workers only add leaf dirs and files."""
    for reg in registries:
        root = registry_root(out, reg)
        os.makedirs(os.path.join(root, "blobs", "sha256"))
        for xx in sorted({h[:2] for h, b in reg.blobs.items() if b.state != "dir_gone"}):
            os.mkdir(os.path.join(root, "blobs", "sha256", xx))
        for repo in reg.repos:
            base = os.path.join(root, "repositories", repo.name)
            if repo.layers or any(a == "layer" for a, _, _ in repo.bad_dirs):
                os.makedirs(os.path.join(base, "_layers", "sha256"))
            if repo.revisions or repo.tags or any(a == "revision" for a, _, _ in repo.bad_dirs):
                os.makedirs(os.path.join(base, "_manifests", "revisions", "sha256"))
                if repo.has_tags_dir:
                    os.mkdir(os.path.join(base, "_manifests", "tags"))
            if repo.uploads:
                os.makedirs(os.path.join(base, "_uploads"))


def write_units(out, registries, worker, workers):
    """Writes every `workers`-th leaf unit (a blob dir, a link dir, a tag, an upload)."""
    unit = -1
    for reg in registries:
        root = registry_root(out, reg)
        blobs_root = os.path.join(root, "blobs", "sha256")
        for hexd, blob in reg.blobs.items():
            unit += 1
            if unit % workers != worker or blob.state == "dir_gone":
                continue
            d = "%s/%s/%s" % (blobs_root, hexd[:2], hexd)
            os.mkdir(d)
            if blob.state == "data_gone":
                continue
            if blob.state == "empty":
                data = b""
            elif blob.state == "truncated":
                full = blob.data()
                data = full[:len(full) // 2]
            else:
                data = blob.data()
            write_file(d + "/data", data)
        for repo in reg.repos:
            base = "%s/repositories/%s" % (root, repo.name)
            layers = base + "/_layers/sha256/"
            revisions = base + "/_manifests/revisions/sha256/"
            for hexd, state in repo.layers.items():
                unit += 1
                if unit % workers == worker:
                    os.mkdir(layers + hexd)
                    write_file(layers + hexd + "/link", link_bytes(hexd, state))
            for hexd, state in repo.revisions.items():
                unit += 1
                if unit % workers == worker:
                    os.mkdir(revisions + hexd)
                    if state != "file_removed":
                        write_file(revisions + hexd + "/link", link_bytes(hexd, state))
            unit += 1
            if unit % workers != worker:
                continue
            # Tags, uploads and odd dirs of a repo are one unit: they are few.
            for area, name, content in repo.bad_dirs:
                d = (layers if area == "layer" else revisions) + name
                os.mkdir(d)
                write_file(d + "/link", content)
            for tag_name, tag in repo.tags.items():
                t = base + "/_manifests/tags/" + tag_name
                os.makedirs(t + "/current")
                if tag.state == "ok":
                    content = b"sha256:" + tag.current.encode()
                elif tag.state == "empty":
                    content = b""
                else:
                    content = b"\x00garbage"
                write_file(t + "/current/link", content)
                os.makedirs(t + "/index/sha256")
                for hexd in tag.history:
                    os.mkdir(t + "/index/sha256/" + hexd)
                    write_file(t + "/index/sha256/" + hexd + "/link", b"sha256:" + hexd.encode())
            for uuid, kind in repo.uploads:
                u = "%s/_uploads/%s" % (base, uuid)
                os.mkdir(u)
                if kind == "empty":
                    continue
                write_file(u + "/startedat", b"2024-05-01T10:00:00.000000000Z")
                if kind == "partial":
                    os.makedirs(u + "/hashstates/sha256")
                    write_file(u + "/hashstates/sha256/4096", b"sha\x03" + bytes(100))
                    write_file(u + "/data", bytes(4096))


def _worker_main(out, registries, worker, workers):
    try:
        write_units(out, registries, worker, workers)
    except OSError as exc:
        print("generate_tree: worker %d: %s" % (worker, exc), file=sys.stderr)
        os._exit(1)


def write_tree(out, registries, workers):
    prepare_dirs(out, registries)
    if workers <= 1:
        write_units(out, registries, 0, 1)
        return
    # fork: the workers share the parent's model without pickling it.
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker_main, args=(out, registries, w, workers)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError("tree writer workers failed: exit codes %s" % failed)


# --- stats and driver ------------------------------------------------------------------------

def model_stats(registries):
    stats = {}
    for reg in registries:
        s = {"repositories": len(reg.repos), "blobs_on_disk": 0, "blob_data_files": 0,
             "manifests": 0, "indexes": 0, "layer_links": 0, "revision_links": 0,
             "tag_current_links": 0, "tag_index_links": 0, "non_digest_link_files": 0,
             "upload_dirs": 0}
        for blob in reg.blobs.values():
            if blob.state != "dir_gone":
                s["blobs_on_disk"] += 1
            if blob.state not in ("dir_gone", "data_gone"):
                s["blob_data_files"] += 1
        for repo in reg.repos:
            s["layer_links"] += len(repo.layers)
            s["revision_links"] += sum(1 for st in repo.revisions.values() if st != "file_removed")
            for hexd in repo.revisions:
                m = reg.manifests.get(hexd)
                if m is not None:
                    s["manifests"] += 1
                    s["indexes"] += m.is_index
            s["tag_current_links"] += len(repo.tags)
            s["tag_index_links"] += sum(len(t.history) for t in repo.tags.values())
            s["non_digest_link_files"] += len(repo.bad_dirs)
            s["upload_dirs"] += len(repo.uploads)
        s["link_files"] = (s["layer_links"] + s["revision_links"] + s["tag_current_links"]
                           + s["tag_index_links"] + s["non_digest_link_files"])
        stats[reg.name] = s
    return stats


def default_out(links, seed, cache_dir=DEFAULT_CACHE_DIR):
    return os.path.join(cache_dir, "tree-l%d-s%d-v%d" % (links, seed, GENERATOR_VERSION))


def load_manifest(out):
    try:
        with open(os.path.join(out, "damage.json"), "rb") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def generate(links, seed, out, workers=2, rate=0.0002, log=print):
    """Generates the tree into `out`/data (replacing anything there) and returns the manifest."""
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    t0 = time.perf_counter()
    gen = Generator(seed, links)
    registries = gen.build()
    t_model = time.perf_counter()
    count = max(5, round(rate * links))
    injected = Damager(registries, random.Random(seed * 7919 + 1), count).inject_all()
    expected, cache_partial = compute_expected(registries)
    t_damage = time.perf_counter()
    data = os.path.join(out, "data")
    os.mkdir(data)
    write_tree(data, registries, workers)
    t_write = time.perf_counter()
    stats = model_stats(registries)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "params": {"links": links, "seed": seed, "damage_per_class": count, "damage_rate": rate},
        "path": data,
        "registries": [r.name for r in registries],
        "stats": stats,
        "link_files": sum(s["link_files"] for s in stats.values()),
        "injected": {cls: {"count": len(sites), "sites": sites} for cls, sites in sorted(injected.items())},
        "expected": {cls: {"count": len(keys), "keys": keys} for cls, keys in expected.items()},
        "expected_by_design": {"cache_unpulled_index_children": cache_partial},
        "timings_seconds": {"model": round(t_model - t0, 2), "damage_and_expected": round(t_damage - t_model, 2),
                            "write": round(t_write - t_damage, 2), "total": round(t_write - t0, 2),
                            "workers": workers},
    }
    tmp = os.path.join(out, "damage.json.tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.rename(tmp, os.path.join(out, "damage.json"))
    log("generated %d link files in %s: model %.1fs, damage %.1fs, write %.1fs (%d workers)" % (
        manifest["link_files"], data, t_model - t0, t_damage - t_model, t_write - t_damage, workers))
    return manifest


def ensure_tree(links, seed, out=None, workers=2, rate=0.0002, log=print):
    """Reuses a complete tree with the same parameters, else generates it."""
    out = out or default_out(links, seed)
    manifest = load_manifest(out)
    if (manifest and manifest.get("generator_version") == GENERATOR_VERSION
            and manifest["params"]["links"] == links and manifest["params"]["seed"] == seed
            and manifest["params"]["damage_rate"] == rate and os.path.isdir(manifest["path"])):
        log("reusing %s (%d link files)" % (manifest["path"], manifest["link_files"]))
        return manifest
    return generate(links, seed, out, workers=workers, rate=rate, log=log)


def parse_count(text):
    text = text.strip().lower()
    scale = {"k": 1000, "m": 1000000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=parse_count, default=100000, help="target link files (100k, 1m, ...)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="output dir (default: .cache/bench/tree-l<links>-s<seed>-v<version>)")
    parser.add_argument("--workers", type=int, default=2, help="writer processes")
    parser.add_argument("--rate", type=float, default=0.0002,
                        help="damage sites per class as a fraction of --links (minimum 5)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete tree exists")
    args = parser.parse_args(argv)
    out = args.out or default_out(args.links, args.seed)
    if args.force:
        manifest = generate(args.links, args.seed, out, workers=args.workers, rate=args.rate)
    else:
        manifest = ensure_tree(args.links, args.seed, out, workers=args.workers, rate=args.rate)
    summary = {cls: v["count"] for cls, v in manifest["injected"].items()}
    print(json.dumps({"path": manifest["path"], "link_files": manifest["link_files"],
                      "injected": summary,
                      "expected": {k: v["count"] for k, v in manifest["expected"].items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
