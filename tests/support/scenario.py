"""A realistic registry host broken in every way the field breaks it.

:func:`build_damaged_tree` starts two real registries under one data dir (the modules' ``path``):

- ``private``: a plain R/W registry;
- ``dockerhub``: a pull-through cache of ``private`` that only holds what was pulled through
  it (a partial index: the amd64 child only).

Content (``label: repo:tag`` — what it shows):

- phase A, pushed before ``garbage-collect --delete-untagged`` ran while the registry served:
  ``alpine: library/alpine:3.19,latest`` Docker image sharing a base layer;
  ``api_v1: team/app/api:v1`` OCI index + attestations whose arm64 child was also uploaded as a
  blob (``_layers`` link: served by the 2.8 fallback after GC, though its layers are swept);
  ``api_old: team/app/api:old`` OCI index whose tag dir was rmtree'd (cleanup-tags.sh);
  ``web_v1: team/app/web:1.0`` Docker manifest list.
- phase B, pushed after the GC:
  ``web_v2: team/app/web:2.0`` and ``api_v2: team/app/api:v2`` (healthy controls);
  ``worker_v1``/``worker_v1_debug: team/app/worker:v1,v1-debug`` sharing the amd64 child
  ``worker_shared``, then DELETEd by digest; ``worker_v0: team/app/worker:v0`` tag rmtree'd and
  its arm64 child DELETEd (an untagged index with a hole);
  ``builder1: tools/builder:1,1-alias`` garbage / empty / two wrong-digest ``_layers`` links, a
  garbage tag link on ``1-alias``; ``builder2: tools/builder:2`` a zero-byte layer and a
  bit-flipped one; ``scanner: tools/scanner:1`` OCI index with its arm64 child's manifest data
  removed and a garbage revision link for its amd64 child; ``debian: base/debian:12`` a layer
  whose blob dir is gone and a config whose ``data`` is a directory;
  ``keep``/``loose: scratch/untagged:keep`` + an untagged manifest whose data is truncated.
- in the cache: ``api_v2`` amd64 only, ``alpine`` and ``debian`` pulled through, then the
  shared base layer's data removed (what a cache expiry does to blobs other repos link).

All damage is made while the registries run; ``Scenario.warm`` records what clients got right
after it, with the descriptor cache still warm.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import damage, storage, truth
from .oci import (
    DOCKER_LAYER,
    Manifest,
    RegistryClient,
    make_attestation,
    make_image,
    make_index,
    make_layer,
    make_multiarch,
    read_body,
)
from .registry import Registry

PROXY_STORE_TIMEOUT_S = 15.0


@dataclass
class Scenario:
    data_dir: Path
    work_dir: Path
    private: Registry
    cache: Registry
    images: dict[str, Manifest] = field(default_factory=dict)
    # What clients got right after the damage, descriptor cache still warm:
    # {(registry name, repo, digest): Probe} for every _layers link.
    warm: dict[tuple[str, str, str], truth.Probe] = field(default_factory=dict)

    @property
    def registries(self) -> list[Registry]:
        return [self.private, self.cache]

    def stop(self) -> None:
        for registry in self.registries:
            registry.stop()


def pull_through(cache: RegistryClient, repo: str, tag: str, *, platforms: set[str] | None = None) -> list[str]:
    """Pull ``repo:tag`` through a cache (only ``platforms`` of an index); blob digests fetched."""
    fetched: list[str] = []
    doc = cache.manifest_json(repo, tag)
    manifests = [doc]
    if doc.get("manifests") is not None:
        manifests = []
        for desc in doc["manifests"]:
            plat = desc.get("platform") or {}
            name = "/".join(filter(None, (plat.get("os"), plat.get("architecture"), plat.get("variant"))))
            if platforms is None or name in platforms:
                manifests.append(cache.manifest_json(repo, desc["digest"]))
    for manifest in manifests:
        for desc in [manifest["config"], *manifest["layers"]]:
            body, error = read_body(cache.get_blob(repo, desc["digest"]))
            if error or len(body) != desc["size"]:
                raise RuntimeError(f"pull through {repo}@{desc['digest']} failed: {error}")
            fetched.append(desc["digest"])
    return fetched


def wait_for_blobs(registry: Registry, repo: str, digests: list[str]) -> None:
    """The cache writes pulled blobs to its storage; wait (bounded) until all are there."""
    deadline = time.monotonic() + PROXY_STORE_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(storage.blob_data(registry.v2, d).is_file() and storage.layer_link(registry.v2, repo, d).is_file()
               for d in digests):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{registry.name} did not store {repo} blobs within {PROXY_STORE_TIMEOUT_S}s")


def build_damaged_tree(base_dir: Path, seed: int = 2024, s3=None) -> Scenario:
    """Build, pull through, damage. The registries keep running (warm caches); stop() them.

    ``s3`` (a :class:`tests.support.seaweed.S3Target`): both registries keep their storage in
    that bucket, the same content pushed and the same damage made there (object deletes and
    rewrites instead of file operations).
    """
    rng = random.Random(seed)
    data_dir, work_dir = Path(base_dir) / "data", Path(base_dir) / "work"
    private = Registry("private", data_dir, work_dir, s3=s3).start()
    cache = Registry("dockerhub", data_dir, work_dir, proxy_remote=private.url, s3=s3)
    scenario = Scenario(data_dir, work_dir, private, cache)
    try:
        _populate_and_damage(scenario, rng)
    except BaseException:
        scenario.stop()
        raise
    return scenario


def _populate_and_damage(s: Scenario, rng: random.Random) -> None:
    client = RegistryClient(s.private.url)
    images = s.images
    base = make_layer(rng, size=4096, media_type=DOCKER_LAYER)

    # -- phase A: content the GC will break --------------------------------------------
    images["alpine"] = make_image(rng, flavor="docker", base_layers=[base], layers=1)
    client.push("library/alpine", images["alpine"], "3.19")
    client.push("library/alpine", images["alpine"], "latest")
    images["api_v1"] = make_multiarch(rng, base_layers=[base])
    client.push("team/app/api", images["api_v1"], "v1")
    # The arm64 child's manifest bytes uploaded as a blob: a _layers link for its digest.
    client.upload_blob("team/app/api", images["api_v1"].children[1].payload)
    images["api_old"] = make_multiarch(rng)
    client.push("team/app/api", images["api_old"], "old")
    images["web_v1"] = make_multiarch(rng, flavor="docker")
    client.push("team/app/web", images["web_v1"], "1.0", chunked=True)
    damage.rmtree_tag(s.private, "team/app/api", "old")
    damage.gc_delete_untagged(s.private)

    # -- phase B: content pushed after the GC ------------------------------------------
    images["web_v2"] = make_multiarch(rng, flavor="docker")
    client.push("team/app/web", images["web_v2"], "2.0")
    images["api_v2"] = make_multiarch(rng, base_layers=[base])
    client.push("team/app/api", images["api_v2"], "v2", chunked=True)

    shared = make_image(rng, platform="linux/amd64")
    images["worker_shared"] = shared
    for label, tag in (("worker_v1", "v1"), ("worker_v1_debug", "v1-debug")):
        arm = make_image(rng, platform="linux/arm64/v8")
        images[label] = make_index([shared, arm, make_attestation(shared, rng), make_attestation(arm, rng)])
        client.push("team/app/worker", images[label], tag)
    images["worker_v0"] = make_multiarch(rng)
    client.push("team/app/worker", images["worker_v0"], "v0")

    images["builder1"] = make_image(rng, flavor="oci", layers=3)
    client.push("tools/builder", images["builder1"], "1")
    client.push("tools/builder", images["builder1"], "1-alias")
    images["builder2"] = make_image(rng, flavor="oci", layers=3)
    client.push("tools/builder", images["builder2"], "2")
    images["scanner"] = make_multiarch(rng)
    client.push("tools/scanner", images["scanner"], "1")
    images["debian"] = make_image(rng, flavor="docker", base_layers=[base], layers=1)
    client.push("base/debian", images["debian"], "12")
    images["keep"] = make_image(rng, layers=1)
    client.push("scratch/untagged", images["keep"], "keep")
    images["loose"] = make_image(rng, layers=1)
    client.push("scratch/untagged", images["loose"])  # by digest only: untagged

    # -- the pull-through cache --------------------------------------------------------
    s.cache.start()
    cache_client = RegistryClient(s.cache.url)
    for repo, tag, platforms in (("team/app/api", "v2", {"linux/amd64"}),
                                 ("library/alpine", "3.19", None),
                                 ("base/debian", "12", None)):
        wait_for_blobs(s.cache, repo, pull_through(cache_client, repo, tag, platforms=platforms))

    # Clients pulled everything that still works: the descriptor caches are warm.
    for repo in storage.repositories(s.private.v2):
        for tag in client.tags(repo):
            client.pull(repo, tag)

    # -- damage while serving ----------------------------------------------------------
    p = s.private
    damage.remove_blob_data(p, images["alpine"].layers[-1].digest)
    damage.api_delete_manifest(p, "team/app/worker", shared.digest)
    damage.rmtree_tag(p, "team/app/worker", "v0")
    damage.api_delete_manifest(p, "team/app/worker", images["worker_v0"].children[1].digest)
    builder1 = images["builder1"]
    damage.garbage_layer_link(p, "tools/builder", builder1.layers[0].digest, "garbage")
    damage.garbage_layer_link(p, "tools/builder", builder1.config.digest, "")
    # Names the config, whose own link is empty: 500.
    damage.garbage_layer_link(p, "tools/builder", builder1.layers[1].digest, builder1.config.digest)
    # Names a healthy blob of the repo: the registry serves that other blob.
    damage.garbage_layer_link(p, "tools/builder", builder1.layers[2].digest, images["builder2"].layers[2].digest)
    damage.garbage_tag_link(p, "tools/builder", "1-alias", "not-a-digest")
    damage.zero_blob_data(p, images["builder2"].layers[0].digest)
    damage.corrupt_blob_data(p, images["builder2"].layers[1].digest, offset=100)
    damage.remove_blob_data(p, images["scanner"].children[1].digest)
    damage.garbage_revision_link(p, "tools/scanner", images["scanner"].children[0].digest)
    damage.remove_blob_dir(p, images["debian"].layers[-1].digest)
    damage.replace_blob_data_with_dir(p, images["debian"].config.digest)
    damage.truncate_blob_data(p, images["loose"].digest, keep=40)
    damage.remove_blob_data(s.cache, base.digest)

    for registry in s.registries:
        registry_client = RegistryClient(registry.url)
        for repo in storage.repositories(registry.v2):
            for digest, _ in storage.layer_links(registry.v2, repo):
                s.warm[(registry.name, repo, digest)] = truth.probe_blob(registry_client, repo, digest)
