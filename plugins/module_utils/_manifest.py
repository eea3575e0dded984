# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Manifest parsing the way distribution 2.8's manifest store dispatches on media type."""

import json
import re

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
INDEX_TYPES = frozenset((OCI_INDEX, DOCKER_LIST))
IMAGE_TYPES = frozenset((OCI_MANIFEST, DOCKER_MANIFEST))
ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
# distribution v3 refuses manifests over 4 MiB; nothing legitimate comes near it.
MANIFEST_MAX_BYTES = 4 * 1024 * 1024

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})\Z")


class InvalidManifest(Exception):
    """Manifest content a 2.8 registry could not serve; the message says why."""


class Manifest:
    """What the audit needs of a manifest: its kind, children (indexes) and blobs (images)."""

    __slots__ = ("blobs", "children", "content_digest", "kind", "media_type")

    def __init__(self, kind, media_type, children=(), blobs=()):
        self.kind = kind  # "index" or "image"
        self.media_type = media_type
        self.children = children  # ((hex, platform dict, is_attestation), ...)
        self.blobs = blobs  # ((hex, "config" | "layer"), ...)
        self.content_digest = None  # sha256 hex of the bytes parsed, when the loader recorded it

    @property
    def is_index(self):
        return self.kind == "index"


def parse_manifest(content):
    """Parse manifest bytes; raise InvalidManifest with a human reason."""
    if len(content) > MANIFEST_MAX_BYTES:
        raise InvalidManifest("manifest is larger than %d bytes" % MANIFEST_MAX_BYTES)
    if not content:
        raise InvalidManifest("manifest blob is empty")
    try:
        doc = json.loads(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifest("manifest is not valid JSON (truncated?): %s" % exc) from None
    if not isinstance(doc, dict):
        raise InvalidManifest("manifest is not a JSON object")
    version = doc.get("schemaVersion")
    media_type = doc.get("mediaType") or ""
    if version == 1:
        return Manifest("image", media_type or DOCKER_SCHEMA1_SIGNED, blobs=_schema1_blobs(doc))
    if version != 2:
        raise InvalidManifest("unsupported schemaVersion %r" % (version,))
    if not isinstance(media_type, str):
        raise InvalidManifest("mediaType is not a string")
    if media_type in INDEX_TYPES:
        return Manifest("index", media_type, children=_children(doc))
    if media_type in IMAGE_TYPES:
        return Manifest("image", media_type, blobs=_image_blobs(doc))
    if media_type == "":
        # OCI content may omit mediaType: 2.8 tries an index first, then an image manifest.
        if isinstance(doc.get("manifests"), list):
            return Manifest("index", OCI_INDEX, children=_children(doc))
        return Manifest("image", OCI_MANIFEST, blobs=_image_blobs(doc))
    raise InvalidManifest("unrecognized manifest media type %s" % media_type)


def _descriptor_hex(descriptor, where):
    if not isinstance(descriptor, dict):
        raise InvalidManifest("%s is not a descriptor object" % where)
    digest = descriptor.get("digest")
    match = _DIGEST.match(digest) if isinstance(digest, str) else None
    if match is None:
        raise InvalidManifest("%s has no sha256 digest (got %r)" % (where, digest))
    return match.group(1)


def _children(doc):
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidManifest("index has no manifests list")
    children = []
    for position, descriptor in enumerate(manifests):
        hex_digest = _descriptor_hex(descriptor, "manifests[%d]" % position)
        platform = descriptor.get("platform")
        platform = platform if isinstance(platform, dict) else {}
        annotations = descriptor.get("annotations")
        annotations = annotations if isinstance(annotations, dict) else {}
        children.append((
            hex_digest,
            {
                "os": _text(platform.get("os")),
                "architecture": _text(platform.get("architecture")),
                "variant": _text(platform.get("variant")),
            },
            annotations.get(ATTESTATION_ANNOTATION) == "attestation-manifest",
        ))
    return tuple(children)


def _image_blobs(doc):
    blobs = []
    config = doc.get("config")
    if config is not None:
        blobs.append((_descriptor_hex(config, "config"), "config"))
    layers = doc.get("layers", [])
    if not isinstance(layers, list):
        raise InvalidManifest("layers is not a list")
    for position, descriptor in enumerate(layers):
        hex_digest = _descriptor_hex(descriptor, "layers[%d]" % position)
        # Foreign (non-distributable) layers are fetched from their URLs, not from the registry.
        if descriptor.get("urls"):
            continue
        blobs.append((hex_digest, "layer"))
    return tuple(blobs)


def _schema1_blobs(doc):
    layers = doc.get("fsLayers")
    if not isinstance(layers, list):
        raise InvalidManifest("schema1 manifest has no fsLayers list")
    blobs = []
    for position, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise InvalidManifest("fsLayers[%d] is not an object" % position)
        hex_digest = _descriptor_hex({"digest": layer.get("blobSum")}, "fsLayers[%d]" % position)
        blobs.append((hex_digest, "layer"))
    return tuple(blobs)


def _text(value):
    return value if isinstance(value, str) and value else None
