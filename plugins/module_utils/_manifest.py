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
# Go's encoding/json (what the registry parses manifests with) refuses nesting deeper than this.
JSON_MAX_DEPTH = 10000


class InvalidManifest(Exception):
    """Manifest content a 2.8 registry could not serve; the message says why."""


# Strings and platform tuples that repeat across thousands of manifests, shared.
_SHARED = {}


def _shared(value):
    return _SHARED.setdefault(value, value)


class Manifest:
    """What the audit needs of a manifest: its kind, children (indexes) and blobs (images).

    A registry scan keeps every parsed manifest, so the digests are packed as 32-byte
    slices of one bytes object and platforms are shared tuples; ``children`` and ``blobs``
    give them back as hex.
    """

    __slots__ = ("_details", "_digests", "intact", "kind", "media_type")

    def __init__(self, kind, media_type, digests=b"", details=()):
        self.kind = kind  # "index" or "image"
        self.media_type = _shared(media_type)
        self._digests = digests  # the children's (index) or blobs' (image) digests, 32 bytes each
        # index: ((os, architecture, variant), is_attestation) per child; image: is_config per blob
        self._details = _shared(details)
        self.intact = None  # whether the bytes parsed hash to the digest, when the loader checked

    @property
    def is_index(self):
        return self.kind == "index"

    def _hexes(self):
        digests = self._digests
        return [digests[start:start + 32].hex() for start in range(0, len(digests), 32)]

    @property
    def children(self):
        """((hex, {"os", "architecture", "variant"}, is_attestation), ...) of an index."""
        if self.kind != "index":
            return ()
        return tuple((hex_digest, {"os": osname, "architecture": arch, "variant": variant}, attestation)
                     for hex_digest, ((osname, arch, variant), attestation) in zip(self._hexes(), self._details))

    @property
    def blobs(self):
        """((hex, "config" | "layer"), ...) of an image manifest."""
        if self.kind == "index":
            return ()
        return tuple((hex_digest, "config" if is_config else "layer")
                     for hex_digest, is_config in zip(self._hexes(), self._details))

    @property
    def child_digests(self):
        """The children's hex digests only (no platform dicts built)."""
        return self._hexes() if self.kind == "index" else []


def parse_manifest(content):
    """Parse manifest bytes; raise InvalidManifest with a human reason (never anything else)."""
    if len(content) > MANIFEST_MAX_BYTES:
        raise InvalidManifest("manifest is larger than %d bytes" % MANIFEST_MAX_BYTES)
    if not content:
        raise InvalidManifest("manifest blob is empty")
    return parse_document(load_json(content))


def load_json(content):
    """The JSON document in ``content``; InvalidManifest when it is not JSON the registry would parse.

    Python's parser recurses: a document nested deeper than it can go (the registry's Go parser
    takes up to 10000 levels) is parsed again by an iterative parser instead.
    """
    try:
        return json.loads(content)
    except RecursionError:
        return _loads_iteratively(content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidManifest("manifest is not valid JSON (truncated?): %s" % exc) from None


def parse_document(doc):
    """A Manifest from an already parsed JSON document; InvalidManifest (never anything else) otherwise."""
    try:
        return _parse_document(doc)
    except InvalidManifest:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        # A shape no rule foresaw: still a finding about this manifest, never a traceback.
        raise InvalidManifest("manifest has an unexpected structure (%s: %s)" % (type(exc).__name__, exc)) from None


def _parse_document(doc):
    if not isinstance(doc, dict):
        raise InvalidManifest("manifest is not a JSON object")
    version = doc.get("schemaVersion")
    media_type = doc.get("mediaType")
    if media_type is None:
        media_type = ""
    if not isinstance(media_type, str):
        raise InvalidManifest("mediaType is not a string")
    if version == 1 and not isinstance(version, bool):
        return Manifest("image", media_type or DOCKER_SCHEMA1_SIGNED, *_schema1_blobs(doc))
    if version != 2 or isinstance(version, bool):
        raise InvalidManifest("unsupported schemaVersion %s" % _short(version))
    if media_type in INDEX_TYPES:
        return Manifest("index", media_type, *_children(doc))
    if media_type in IMAGE_TYPES:
        return Manifest("image", media_type, *_image_blobs(doc))
    if media_type == "":
        # OCI content may omit mediaType: 2.8 tries an index first, then an image manifest.
        if isinstance(doc.get("manifests"), list):
            return Manifest("index", OCI_INDEX, *_children(doc))
        return Manifest("image", OCI_MANIFEST, *_image_blobs(doc))
    raise InvalidManifest("unrecognized manifest media type %s" % _short(media_type))


def _short(value, limit=80):
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "..."


_JSON_TOKEN = re.compile(r"""
    \s*(?:
      (?P<open>[\[{]) | (?P<close>[\]}]) | (?P<comma>,) | (?P<colon>:)
    | (?P<string>"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")
    | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
    | (?P<literal>true|false|null)
    )""", re.VERBOSE)
_LITERALS = {"true": True, "false": False, "null": None}


def _loads_iteratively(content):
    """A strict JSON parser with an explicit stack, for documents nested too deep for json.loads."""
    try:
        text = content.decode("utf-8") if isinstance(content, bytes) else content
    except UnicodeDecodeError as exc:
        raise InvalidManifest("manifest is not valid JSON: %s" % exc) from None
    stack = []  # [container, pending object key] per open array or object
    # What may come next: value, value_or_end ("[" just opened), key, key_or_end ("{" just
    # opened), colon, comma_or_end, end (the top-level value is complete).
    state = "value"
    position = 0
    result = None
    while True:
        match = _JSON_TOKEN.match(text, position)
        if match is None:
            if state == "end" and not text[position:].strip():
                return result
            raise InvalidManifest("manifest is not valid JSON at character %d" % position)
        position = match.end()
        kind = match.lastgroup
        token = match.group(kind)
        if kind in ("open", "string", "number", "literal"):
            if state in ("key", "key_or_end"):
                if kind != "string":
                    raise InvalidManifest("manifest is not valid JSON at character %d" % position)
                stack[-1][1] = json.loads(token)
                state = "colon"
                continue
            if state not in ("value", "value_or_end"):
                raise InvalidManifest("manifest is not valid JSON at character %d" % position)
            if kind == "open":
                if len(stack) >= JSON_MAX_DEPTH:
                    raise InvalidManifest("manifest nests JSON deeper than %d levels" % JSON_MAX_DEPTH)
                stack.append([{} if token == "{" else [], None])
                state = "key_or_end" if token == "{" else "value_or_end"
                continue
            value = _LITERALS[token] if kind == "literal" else json.loads(token)
        elif kind == "close":
            is_object = bool(stack) and isinstance(stack[-1][0], dict)
            if not stack or (token == "}") != is_object or state not in (
                    "comma_or_end", "key_or_end" if is_object else "value_or_end"):
                raise InvalidManifest("manifest is not valid JSON at character %d" % position)
            value = stack.pop()[0]
        elif kind == "colon":
            if state != "colon":
                raise InvalidManifest("manifest is not valid JSON at character %d" % position)
            state = "value"
            continue
        else:  # comma
            if state != "comma_or_end":
                raise InvalidManifest("manifest is not valid JSON at character %d" % position)
            state = "key" if isinstance(stack[-1][0], dict) else "value"
            continue
        if not stack:
            result = value
            state = "end"
            continue
        container, key = stack[-1]
        if isinstance(container, dict):
            container[key] = value
        else:
            container.append(value)
        state = "comma_or_end"


def _descriptor_digest(descriptor, where):
    """The 32-byte digest of a descriptor's "sha256:<64 lowercase hex>"; InvalidManifest otherwise."""
    try:
        digest = descriptor["digest"]
        raw = bytes.fromhex(digest[7:])
        # fromhex also takes upper case and spaces: only the canonical form round-trips.
        if digest[:7] == "sha256:" and len(raw) == 32 and raw.hex() == digest[7:]:
            return raw
    except (TypeError, KeyError, ValueError):
        pass
    if not isinstance(descriptor, dict):
        raise InvalidManifest("%s is not a descriptor object" % where)
    raise InvalidManifest("%s has no sha256 digest (got %s)" % (where, _short(descriptor.get("digest"))))


def _children(doc):
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidManifest("index has no manifests list")
    digests = []
    details = []
    for position, descriptor in enumerate(manifests):
        digests.append(_descriptor_digest(descriptor, "manifests[%d]" % position))
        platform = descriptor.get("platform")
        platform = platform if isinstance(platform, dict) else {}
        annotations = descriptor.get("annotations")
        annotations = annotations if isinstance(annotations, dict) else {}
        details.append(_shared((
            _shared((_text(platform.get("os")), _text(platform.get("architecture")),
                     _text(platform.get("variant")))),
            annotations.get(ATTESTATION_ANNOTATION) == "attestation-manifest",
        )))
    return b"".join(digests), tuple(details)


def _image_blobs(doc):
    digests = []
    details = []
    config = doc.get("config")
    if config is not None:
        digests.append(_descriptor_digest(config, "config"))
        details.append(True)
    layers = doc.get("layers", [])
    if not isinstance(layers, list):
        raise InvalidManifest("layers is not a list")
    for position, descriptor in enumerate(layers):
        raw = _descriptor_digest(descriptor, "layers[%d]" % position)
        # Foreign (non-distributable) layers are fetched from their URLs, not from the registry.
        if descriptor.get("urls"):
            continue
        digests.append(raw)
        details.append(False)
    return b"".join(digests), tuple(details)


def _schema1_blobs(doc):
    layers = doc.get("fsLayers")
    if not isinstance(layers, list):
        raise InvalidManifest("schema1 manifest has no fsLayers list")
    digests = []
    for position, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise InvalidManifest("fsLayers[%d] is not an object" % position)
        digests.append(_descriptor_digest({"digest": layer.get("blobSum")}, "fsLayers[%d]" % position))
    return b"".join(digests), (False,) * len(digests)


def _text(value):
    return value if isinstance(value, str) and value else None
