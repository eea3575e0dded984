"""A small registry host for the playbook and artifact tests: healthy where it must be clean.

:func:`build_small_tree` starts two real registries under one data dir (the modules' ``path``):

- ``private``: a multi-arch OCI image (``team/app:1.0``, amd64 + arm64 + attestations) and two
  builds of a Docker image (``team/tool:1``, an hour older on disk, and ``team/tool:2``), all
  intact: the scanners, the audit and the probe find nothing;
- ``dockerhub``: a plain image (``library/base:1``) one of whose layers lost its blob data, as a
  pull-through cache's expiry leaves it: one orphan layer link, which is a cache's normal state.

The registries keep serving; the caller stops them (``SmallTree.stop``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import damage
from .oci import Manifest, RegistryClient, make_image, make_multiarch
from .registry import Registry


@dataclass
class SmallTree:
    data_dir: Path
    private: Registry
    cache: Registry
    images: dict[str, Manifest] = field(default_factory=dict)
    cache_orphan_digest: str = ""

    def stop(self) -> None:
        for registry in (self.private, self.cache):
            registry.stop()


def build_small_tree(base: Path) -> SmallTree:
    data_dir, work_dir = base / "data", base / "work"
    private = Registry("private", data_dir, work_dir).start()
    cache = Registry("dockerhub", data_dir, work_dir)
    tree = SmallTree(data_dir, private, cache)
    try:
        cache.start()
        client = RegistryClient(private.url)
        tree.images["app"] = make_multiarch(501, attestations=True)
        tree.images["tool"] = make_image(502, flavor="docker", layers=2)
        client.push("team/app", tree.images["app"], "1.0")
        # team/tool:1 is an older build, an hour older on disk: what a tag cleanup keeping one removes.
        tree.images["tool_old"] = make_image(504, flavor="docker", layers=2)
        client.push("team/tool", tree.images["tool_old"], "1")
        client.push("team/tool", tree.images["tool"], "2")
        old_tag_link = private.v2 / "repositories" / "team" / "tool" / "_manifests" / "tags" / "1" / "current" / "link"
        hour_ago = time.time() - 3600
        os.utime(old_tag_link, (hour_ago, hour_ago))
        tree.images["base"] = make_image(503, flavor="docker", layers=2)
        RegistryClient(cache.url).push("library/base", tree.images["base"], "1")
        tree.cache_orphan_digest = tree.images["base"].layers[0].digest
        damage.remove_blob_data(cache, tree.cache_orphan_digest)
    except BaseException:
        tree.stop()
        raise
    return tree
