"""parse_manifest dispatches on media type the way distribution 2.8's manifest store does."""

import json

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils._manifest import (
    MANIFEST_MAX_BYTES,
    InvalidManifest,
    parse_manifest,
)
from tests.support.tree import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    sha256_hex,
)

H1, H2, H3, H4 = (sha256_hex(str(n).encode()) for n in range(4))


def encode(doc):
    return json.dumps(doc).encode()


def descriptor(media_type, hex_digest, **extra):
    return dict({"mediaType": media_type, "digest": "sha256:" + hex_digest, "size": 10}, **extra)


def image_doc(media_type, config_type=OCI_CONFIG, layer_type=OCI_LAYER):
    doc = {
        "schemaVersion": 2,
        "config": descriptor(config_type, H1),
        "layers": [descriptor(layer_type, H2), descriptor(layer_type, H3)],
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


def index_doc(media_type, child_type=OCI_MANIFEST):
    doc = {
        "schemaVersion": 2,
        "manifests": [
            descriptor(child_type, H1, platform={"os": "linux", "architecture": "amd64"}),
            descriptor(child_type, H2, platform={"os": "linux", "architecture": "arm", "variant": "v7"}),
        ],
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


@pytest.mark.parametrize("media_type, child_type", [
    pytest.param(OCI_INDEX, OCI_MANIFEST, id="oci-index"),
    pytest.param(DOCKER_LIST, DOCKER_MANIFEST, id="docker-list"),
])
def test_index(media_type, child_type):
    manifest = parse_manifest(encode(index_doc(media_type, child_type)))
    assert manifest.is_index
    assert manifest.kind == "index"
    assert manifest.media_type == media_type
    assert manifest.children == (
        (H1, {"os": "linux", "architecture": "amd64", "variant": None}, False),
        (H2, {"os": "linux", "architecture": "arm", "variant": "v7"}, False),
    )
    assert manifest.blobs == ()


@pytest.mark.parametrize("media_type, config_type, layer_type", [
    pytest.param(OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, id="oci-image"),
    pytest.param(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, id="docker-image"),
])
def test_image(media_type, config_type, layer_type):
    manifest = parse_manifest(encode(image_doc(media_type, config_type, layer_type)))
    assert not manifest.is_index
    assert manifest.media_type == media_type
    assert manifest.blobs == ((H1, "config"), (H2, "layer"), (H3, "layer"))
    assert manifest.children == ()


def test_schema1_layers_from_fs_layers():
    doc = {
        "schemaVersion": 1,
        "name": "library/app",
        "tag": "old",
        "fsLayers": [{"blobSum": "sha256:" + H1}, {"blobSum": "sha256:" + H2}],
        "history": [{"v1Compatibility": "{}"}, {"v1Compatibility": "{}"}],
        "signatures": [],
    }
    manifest = parse_manifest(encode(doc))
    assert manifest.kind == "image"
    assert manifest.blobs == ((H1, "layer"), (H2, "layer"))


def test_schema1_without_fs_layers_is_invalid():
    with pytest.raises(InvalidManifest, match="fsLayers"):
        parse_manifest(encode({"schemaVersion": 1, "name": "x"}))


def test_missing_media_type_with_manifests_list_is_an_oci_index():
    manifest = parse_manifest(encode(index_doc(None)))
    assert manifest.is_index
    assert manifest.media_type == OCI_INDEX
    assert [child[0] for child in manifest.children] == [H1, H2]


def test_missing_media_type_with_empty_manifests_list_is_still_an_index():
    # 2.8 takes it as an index when `manifests` is present at all (a non-nil Go slice).
    assert parse_manifest(encode({"schemaVersion": 2, "manifests": []})).is_index


def test_missing_media_type_without_manifests_is_an_oci_image():
    manifest = parse_manifest(encode(image_doc(None)))
    assert manifest.kind == "image"
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.blobs == ((H1, "config"), (H2, "layer"), (H3, "layer"))


def test_foreign_layers_with_urls_are_skipped():
    doc = image_doc(DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    doc["layers"].insert(0, descriptor("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", H4,
                                       urls=["https://mcr.microsoft.com/v2/windows/blobs/sha256:" + H4]))
    manifest = parse_manifest(encode(doc))
    assert manifest.blobs == ((H1, "config"), (H2, "layer"), (H3, "layer"))


def test_attestation_children_are_flagged():
    doc = index_doc(OCI_INDEX)
    doc["manifests"].append(descriptor(
        OCI_MANIFEST, H3,
        platform={"os": "unknown", "architecture": "unknown"},
        annotations={"vnd.docker.reference.digest": "sha256:" + H1,
                     "vnd.docker.reference.type": "attestation-manifest"},
    ))
    doc["manifests"].append(descriptor(OCI_MANIFEST, H4, annotations={"org.opencontainers.image.ref.name": "x"}))
    children = parse_manifest(encode(doc)).children
    assert [(child[0], child[2]) for child in children] == [(H1, False), (H2, False), (H3, True), (H4, False)]
    assert children[2][1] == {"os": "unknown", "architecture": "unknown", "variant": None}
    assert children[3][1] == {"os": None, "architecture": None, "variant": None}


def test_largest_allowed_manifest_parses():
    doc = image_doc(OCI_MANIFEST)
    doc["annotations"] = {"pad": ""}
    size = len(encode(doc))
    doc["annotations"]["pad"] = "x" * (MANIFEST_MAX_BYTES - size)
    content = encode(doc)
    assert len(content) == MANIFEST_MAX_BYTES == 4 * 1024 * 1024
    assert parse_manifest(content).kind == "image"


def _too_large():
    return b" " * MANIFEST_MAX_BYTES + encode(image_doc(OCI_MANIFEST))


def _with(doc, **changes):
    doc = dict(doc, **changes)
    return encode(doc)


def _bad_child_digest(value):
    doc = index_doc(OCI_INDEX)
    doc["manifests"][1]["digest"] = value
    return encode(doc)


def _bad_layer_digest(value):
    doc = image_doc(OCI_MANIFEST)
    doc["layers"][1]["digest"] = value
    return encode(doc)


@pytest.mark.parametrize("content, reason", [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(encode(index_doc(OCI_INDEX))[:-20], "not valid JSON", id="truncated-json"),
    pytest.param(b"\xff\xfe{not utf8", "not valid JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", "not a JSON object", id="json-array"),
    pytest.param(b'"a string"', "not a JSON object", id="json-string"),
    pytest.param(b"null", "not a JSON object", id="json-null"),
    pytest.param(_with(image_doc(OCI_MANIFEST), mediaType="application/vnd.example+json"),
                 r"unrecognized manifest media type application/vnd\.example\+json", id="unknown-media-type"),
    pytest.param(_with(image_doc(OCI_MANIFEST), mediaType=5), "mediaType is not a string", id="media-type-number"),
    pytest.param(_with(image_doc(OCI_MANIFEST), schemaVersion=3), "unsupported schemaVersion 3", id="schema-3"),
    pytest.param(_with(image_doc(OCI_MANIFEST), schemaVersion="2"), "unsupported schemaVersion", id="schema-str"),
    pytest.param(encode({"mediaType": OCI_MANIFEST}), "unsupported schemaVersion None", id="no-schema"),
    pytest.param(_too_large(), "larger than 4194304 bytes", id="too-large"),
    pytest.param(_bad_child_digest("sha256:" + "A" * 64), r"manifests\[1\] has no sha256 digest", id="child-upper"),
    pytest.param(_bad_child_digest("sha256:abc"), r"manifests\[1\] has no sha256 digest", id="child-short"),
    pytest.param(_bad_child_digest(None), r"manifests\[1\] has no sha256 digest", id="child-null"),
    pytest.param(_bad_layer_digest("sha512:" + "a" * 128), r"layers\[1\] has no sha256 digest", id="layer-sha512"),
    pytest.param(_with(image_doc(OCI_MANIFEST), config={"digest": 7}), "config has no sha256 digest",
                 id="config-bad"),
    pytest.param(_with(image_doc(OCI_MANIFEST), config="sha256:" + H1), "config is not a descriptor object",
                 id="config-string"),
    pytest.param(_with(image_doc(OCI_MANIFEST), layers={"a": 1}), "layers is not a list", id="layers-object"),
    pytest.param(_with(index_doc(OCI_INDEX), manifests=None), "index has no manifests list", id="index-no-list"),
    pytest.param(_with(index_doc(OCI_INDEX), manifests=["sha256:" + H1]), r"manifests\[0\] is not a descriptor",
                 id="index-string-child"),
])
def test_invalid_manifest(content, reason):
    with pytest.raises(InvalidManifest, match=reason):
        parse_manifest(content)
