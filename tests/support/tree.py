"""Small distribution 2.8 storage trees built file by file in tmp dirs (the unit tests' builder).

Paths come from tests/support/storage.py, the one place the tests know the layout.

Media types are written out here on purpose (not imported from the plugin), so a typo
in the plugin cannot make the tests agree with it.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

from tests.support import storage

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
EMPTY_HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64 = {"os": "linux", "architecture": "arm64", "variant": "v8"}


def sha256_hex(content):
    return hashlib.sha256(content).hexdigest()


def digest(hex_digest):
    return "sha256:" + hex_digest


class RegistryTree:
    """One registry's storage (``<path>/<name>/docker/registry/v2``) as 2.8 writes it."""

    def __init__(self, root):
        self.root = Path(root)
        self.name = self.root.name
        self.v2 = self.root / "docker" / "registry" / "v2"
        (self.v2 / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.v2 / "repositories").mkdir(parents=True, exist_ok=True)

    # -- paths (tests/support/storage.py knows the layout) -------------------------------
    def blob_dir(self, hex_digest):
        return storage.blob_dir(self.v2, digest(hex_digest))

    def data_path(self, hex_digest):
        return storage.blob_data(self.v2, digest(hex_digest))

    def repo_dir(self, repo):
        return storage.repo_dir(self.v2, repo)

    def layer_link_path(self, repo, hex_digest):
        return storage.layer_link(self.v2, repo, digest(hex_digest))

    def revision_link_path(self, repo, hex_digest):
        return storage.revision_link(self.v2, repo, digest(hex_digest))

    def tag_dir(self, repo, tag):
        return storage.tag_dir(self.v2, repo, tag)

    def tag_link_path(self, repo, tag):
        return storage.tag_current_link(self.v2, repo, tag)

    # -- raw writes --------------------------------------------------------------------
    def put_blob(self, content):
        """Store content under its real sha256; returns the hex digest."""
        hex_digest = sha256_hex(content)
        self.blob_dir(hex_digest).mkdir(parents=True, exist_ok=True)
        self.data_path(hex_digest).write_bytes(content)
        return hex_digest

    @staticmethod
    def write_link(link_path, content):
        link_path.parent.mkdir(parents=True, exist_ok=True)
        link_path.write_bytes(content.encode("ascii") if isinstance(content, str) else content)
        return link_path

    def link_layer(self, repo, hex_digest, content=None):
        return self.write_link(self.layer_link_path(repo, hex_digest),
                               digest(hex_digest) if content is None else content)

    def link_revision(self, repo, hex_digest, content=None):
        return self.write_link(self.revision_link_path(repo, hex_digest),
                               digest(hex_digest) if content is None else content)

    def tag(self, repo, tag, hex_digest, content=None):
        self.write_link(self.tag_dir(repo, tag) / "index" / "sha256" / hex_digest / "link", digest(hex_digest))
        return self.write_link(self.tag_link_path(repo, tag), digest(hex_digest) if content is None else content)

    # -- pushes, as the registry records them ------------------------------------------
    def push_blob(self, repo, content):
        hex_digest = self.put_blob(content)
        self.link_layer(repo, hex_digest)
        return hex_digest

    def put_manifest(self, repo, content, tags=()):
        """Manifest bytes (or a dict) stored as a blob with a revision link, then tagged."""
        if isinstance(content, dict):
            content = json.dumps(content, indent=3).encode()
        hex_digest = self.put_blob(content)
        self.link_revision(repo, hex_digest)
        for tag in tags:
            self.tag(repo, tag, hex_digest)
        return hex_digest

    def image_manifest(self, repo, name, layers=None, media_type=OCI_MANIFEST, platform=AMD64):
        """Push config + layers of an image; returns the manifest document (not stored)."""
        layers = [b"layer of " + name.encode()] if layers is None else layers
        docker = media_type == DOCKER_MANIFEST
        layer_hexes = [self.push_blob(repo, layer) for layer in layers]
        config = json.dumps({
            "architecture": platform["architecture"],
            "os": platform["os"],
            "rootfs": {"type": "layers", "diff_ids": [digest(h) for h in layer_hexes]},
            "config": {"Labels": {"test.image": name}},
        }).encode()
        config_hex = self.push_blob(repo, config)
        return {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, "digest": digest(config_hex),
                       "size": len(config)},
            "layers": [
                {"mediaType": DOCKER_LAYER if docker else OCI_LAYER, "digest": digest(h), "size": len(layer)}
                for h, layer in zip(layer_hexes, layers)
            ],
        }

    def push_image(self, repo, name, layers=None, media_type=OCI_MANIFEST, platform=AMD64, tags=()):
        """Config, layers and manifest of one image; returns the manifest hex digest."""
        doc = self.image_manifest(repo, name, layers, media_type, platform)
        return self.put_manifest(repo, doc, tags)

    def index_document(self, children, media_type=OCI_INDEX):
        """children: (hex, platform) or (hex, platform, attestation_of_hex)."""
        child_media = DOCKER_MANIFEST if media_type == DOCKER_LIST else OCI_MANIFEST
        manifests = []
        for child in children:
            hex_digest, platform = child[0], child[1]
            descriptor = {
                "mediaType": child_media,
                "digest": digest(hex_digest),
                "size": self.data_path(hex_digest).stat().st_size if self.data_path(hex_digest).exists() else 1,
                "platform": dict(platform),
            }
            if len(child) > 2:
                descriptor["annotations"] = {
                    "vnd.docker.reference.digest": digest(child[2]),
                    "vnd.docker.reference.type": "attestation-manifest",
                }
            manifests.append(descriptor)
        return {"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}

    def push_index(self, repo, children, media_type=OCI_INDEX, tags=()):
        return self.put_manifest(repo, self.index_document(children, media_type), tags)

    def push_multiarch(self, repo, name, media_type=OCI_INDEX, tags=(), attestation=False):
        """amd64 + arm64 children (and an attestation for amd64); returns (index, [children])."""
        image_type = DOCKER_MANIFEST if media_type == DOCKER_LIST else OCI_MANIFEST
        amd = self.push_image(repo, name + "-amd64", media_type=image_type, platform=AMD64)
        arm = self.push_image(repo, name + "-arm64", media_type=image_type, platform=ARM64)
        children = [(amd, AMD64), (arm, ARM64)]
        if attestation:
            att = self.push_image(repo, name + "-att", media_type=OCI_MANIFEST,
                                  platform={"os": "unknown", "architecture": "unknown"})
            children.append((att, {"os": "unknown", "architecture": "unknown"}, amd))
        index = self.push_index(repo, children, media_type, tags)
        return index, [child[0] for child in children]

    # -- damage, the way the real tools leave it ---------------------------------------
    def delete_revision(self, repo, hex_digest):
        """What DELETE /v2/<repo>/manifests/<digest> leaves: an empty <hex>/ dir, tags gone."""
        self.revision_link_path(repo, hex_digest).unlink()
        tags_dir = self.repo_dir(repo) / "_manifests" / "tags"
        if tags_dir.is_dir():
            for tag_dir in tags_dir.iterdir():
                current = tag_dir / "current" / "link"
                if current.is_file() and current.read_text() == digest(hex_digest):
                    shutil.rmtree(tag_dir)

    def remove_data(self, hex_digest):
        self.data_path(hex_digest).unlink()

    def remove_blob_dir(self, hex_digest):
        shutil.rmtree(self.blob_dir(hex_digest))

    def truncate_data(self, hex_digest, size=0):
        with open(self.data_path(hex_digest), "r+b") as handle:
            handle.truncate(size)


def snapshot(root):
    """Every entry under root, symlinks and FIFOs recorded, never followed or opened (tests/support/storage.py)."""
    return storage.snapshot(root)


def deny_access(monkeypatch, denied_path):
    """Make os.open / os.scandir of one path fail with EACCES (tests run as root, chmod is moot)."""
    denied_path = str(denied_path)
    real_open, real_scandir = os.open, os.scandir

    def full_path(path, dir_fd=None):
        # The scanners open names relative to directory descriptors: resolve them like the kernel.
        if isinstance(path, int):
            return os.readlink("/proc/self/fd/%d" % path)
        if dir_fd is not None:
            return os.path.join(os.readlink("/proc/self/fd/%d" % dir_fd), str(path))
        return str(path)

    def open_(path, flags, mode=0o777, *, dir_fd=None):
        if full_path(path, dir_fd) == denied_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def scandir(path="."):
        if full_path(path) == denied_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "scandir", scandir)
