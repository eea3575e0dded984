#!/usr/bin/env python3
"""The benchmark's baseline: the naive storage scan the issue defines.

os.walk over every registry's repositories, for each link file an isfile of the blob data,
for each revision a json.load of the manifest (checking an index's children with isfile of
their revision or _layers link and of their blob data). No caching: a blob linked by many
repos is checked once per link, a manifest linked by many repos is parsed once per link.

Usage: naive_scan.py PATH   (prints the counts as JSON)
"""

import json
import os
import sys
import time

LAYOUT = os.path.join("docker", "registry", "v2")
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
INDEX_MEDIA_TYPES = ("application/vnd.oci.image.index.v1+json",
                     "application/vnd.docker.distribution.manifest.list.v2+json")


def registries(path):
    if os.path.isdir(os.path.join(path, LAYOUT)):
        return [(os.path.basename(os.path.abspath(path)), os.path.join(path, LAYOUT))]
    return [(name, os.path.join(path, name, LAYOUT)) for name in sorted(os.listdir(path))
            if os.path.isdir(os.path.join(path, name, LAYOUT))]


def blob_data(v2, hexd):
    return os.path.join(v2, "blobs", "sha256", hexd[:2], hexd, "data")


def manifest_servable(v2, repo_dir, hexd):
    revision = os.path.join(repo_dir, "_manifests", "revisions", "sha256", hexd, "link")
    layer = os.path.join(repo_dir, "_layers", "sha256", hexd, "link")
    return (os.path.isfile(revision) or os.path.isfile(layer)) and os.path.isfile(blob_data(v2, hexd))


def scan_registry(v2, counts, zero_byte):
    repositories = os.path.join(v2, "repositories")
    for dirpath, _dirnames, filenames in os.walk(repositories):
        if "link" not in filenames:
            continue
        counts["link_files"] += 1
        parts = os.path.relpath(dirpath, repositories).split(os.sep)
        if "_layers" in parts:
            marker, kind = parts.index("_layers"), "layer"
        elif "revisions" in parts:
            marker, kind = parts.index("_manifests"), "revision"
        elif "current" in parts:
            marker, kind = parts.index("_manifests"), "tag"
        elif "_manifests" in parts:
            counts["tag_history_links"] += 1
            continue
        else:
            continue
        repo_dir = os.path.join(repositories, *parts[:marker])
        with open(os.path.join(dirpath, "link"), "rb") as f:
            content = f.read()
        hexd = parts[-2] if kind == "tag" else parts[-1]
        if kind == "tag":
            target = content[7:].decode("ascii", "replace")
            if not content.startswith(b"sha256:") or len(target) != 64 or not manifest_servable(v2, repo_dir, target):
                counts["broken_tags"] += 1
            continue
        if content != b"sha256:" + hexd.encode():
            counts["invalid_link_files"] += 1
            continue
        data = blob_data(v2, hexd)
        if kind == "layer":
            counts["layer_links"] += 1
            if not os.path.isfile(data):
                counts["orphan_layer_links"] += 1
            elif hexd != EMPTY_SHA256 and os.path.getsize(data) == 0:
                zero_byte.add((v2, hexd))
            continue
        counts["revision_links"] += 1
        if not os.path.isfile(data):
            counts["revisions_without_blob"] += 1
            continue
        try:
            with open(data, "rb") as f:
                manifest = json.load(f)
        except ValueError:
            counts["invalid_manifests"] += 1
            continue
        if not isinstance(manifest, dict) or manifest.get("mediaType") not in INDEX_MEDIA_TYPES:
            continue
        counts["indexes"] += 1
        for child in manifest.get("manifests") or ():
            child_hex = str(child.get("digest", ""))[7:]
            if not manifest_servable(v2, repo_dir, child_hex):
                counts["orphan_index_children"] += 1


def naive_scan(path):
    keys = ("link_files", "layer_links", "revision_links", "tag_history_links", "indexes",
            "orphan_layer_links", "invalid_link_files", "zero_byte_blobs", "orphan_index_children",
            "broken_tags", "invalid_manifests", "revisions_without_blob")
    counts = dict.fromkeys(keys, 0)
    zero_byte = set()
    for _name, v2 in registries(path):
        scan_registry(v2, counts, zero_byte)
    counts["zero_byte_blobs"] = len(zero_byte)
    return counts


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    start = time.perf_counter()
    counts = naive_scan(argv[1])
    counts["seconds"] = round(time.perf_counter() - start, 3)
    print(json.dumps(counts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
