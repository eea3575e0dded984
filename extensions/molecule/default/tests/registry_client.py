#!/usr/bin/env python3
"""Small registry API client the tests copy into the VM and run there (standard library only).

Every command prints one JSON document on stdout. Content is generated from a seed, so the tests
know exactly which bytes they pushed. The password comes from $REGISTRY_PASSWORD, never argv.

  registry_client.py push-image  --registry URL --repo R --tag T --seed S [--arch A] [--layers N] [--dry-run]
  registry_client.py push-index  --registry URL --repo R --tag T --seed S [--archs a,b]
  registry_client.py pull-image  --registry URL --repo R --ref TAG_OR_DIGEST
  registry_client.py request     --url URL [--method M] [--header "K: V"]
  registry_client.py hammer      --url URL --count N   (N requests at once; statuses and seconds)
  registry_client.py tls-version --url https://HOST:PORT --tls-max 1.1|1.2|1.3   (handshake outcome)
common: [--user U] [--cafile PEM]
"""

import argparse
import base64
import collections
import hashlib
import json
import os
import random
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT_MANIFESTS = ", ".join(
    [
        MANIFEST_TYPE,
        INDEX_TYPE,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def sha256_digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answers the tests look at, not something to follow silently."""

    def redirect_request(self, *args, **kwargs):
        return None


class Registry:
    def __init__(self, base_url, user=None, password=None, cafile=None):
        self.base_url = base_url.rstrip("/")
        context = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
        self.opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect)
        self.authorization = None
        if user is not None:
            token = base64.b64encode(("%s:%s" % (user, password or "")).encode()).decode()
            self.authorization = "Basic " + token

    def request(self, method, url, body=None, headers=None, auth=True):
        if not url.startswith(("http://", "https://")):
            url = self.base_url + url
        request = urllib.request.Request(url, data=body, method=method)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if auth and self.authorization:
            request.add_header("Authorization", self.authorization)
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()

    def expect(self, status, wanted, what, body):
        if status not in wanted:
            raise SystemExit("%s: HTTP %s: %s" % (what, status, body[:500].decode("utf-8", "replace")))

    def push_blob(self, repo, data):
        digest = sha256_digest(data)
        status, headers, body = self.request("POST", "/v2/%s/blobs/uploads/" % repo)
        self.expect(status, (202,), "start upload to %s" % repo, body)
        location = urllib.parse.urljoin(self.base_url + "/", headers["location"])
        separator = "&" if "?" in location else "?"
        status, _, body = self.request(
            "PUT",
            location + separator + "digest=" + urllib.parse.quote(digest),
            body=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        self.expect(status, (201,), "upload %s to %s" % (digest, repo), body)
        return digest

    def push_manifest(self, repo, reference, payload, media_type):
        status, headers, body = self.request(
            "PUT", "/v2/%s/manifests/%s" % (repo, reference), body=payload, headers={"Content-Type": media_type}
        )
        self.expect(status, (201,), "put manifest %s:%s" % (repo, reference), body)
        return headers.get("docker-content-digest", sha256_digest(payload))


def generate_image(seed, arch, layer_count, layer_size):
    rng = random.Random("%s/%s" % (seed, arch))
    layers = [rng.randbytes(layer_size + index) for index in range(layer_count)]
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(layer) for layer in layers]},
            "config": {"Labels": {"org.regwarden.test-seed": str(seed)}},
        },
        sort_keys=True,
    ).encode()
    return config, layers


def push_image(registry, repo, reference, seed, arch, layer_count, layer_size, dry_run=False):
    config, layers = generate_image(seed, arch, layer_count, layer_size)
    if dry_run:
        config_digest = sha256_digest(config)
        layer_digests = [sha256_digest(layer) for layer in layers]
    else:
        config_digest = registry.push_blob(repo, config)
        layer_digests = [registry.push_blob(repo, layer) for layer in layers]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
            "layers": [
                {"mediaType": LAYER_TYPE, "digest": digest, "size": len(layer)}
                for digest, layer in zip(layer_digests, layers)
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest = sha256_digest(manifest)
    if not dry_run:
        registry.push_manifest(repo, reference or manifest_digest, manifest, MANIFEST_TYPE)
    return {
        "repo": repo,
        "arch": arch,
        "manifest_digest": manifest_digest,
        "manifest_size": len(manifest),
        "config_digest": config_digest,
        "layers": layer_digests,
        "blob_sizes": {config_digest: len(config), **{d: len(x) for d, x in zip(layer_digests, layers)}},
    }


def pull_image(registry, repo, reference):
    status, headers, manifest_bytes = registry.request(
        "GET", "/v2/%s/manifests/%s" % (repo, reference), headers={"Accept": ACCEPT_MANIFESTS}
    )
    registry.expect(status, (200,), "get manifest %s:%s" % (repo, reference), manifest_bytes)
    manifest = json.loads(manifest_bytes)
    blobs = {}
    for descriptor in [manifest["config"], *manifest["layers"]]:
        status, _, data = registry.request("GET", "/v2/%s/blobs/%s" % (repo, descriptor["digest"]))
        blobs[descriptor["digest"]] = {"status": status, "digest": sha256_digest(data), "size": len(data)}
    return {
        "manifest_digest": sha256_digest(manifest_bytes),
        "manifest_content_type": headers.get("content-type"),
        "blobs": blobs,
    }


def hammer(registry, url, count):
    """``count`` requests at once (one thread each); how they were answered and how long it took."""
    statuses = collections.Counter()
    lock = threading.Lock()

    def one():
        status, _headers, _body = registry.request("GET", url)
        with lock:
            statuses[str(status)] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return {"statuses": dict(statuses), "seconds": round(time.monotonic() - started, 2)}


def tls_version(url, cafile, maximum):
    """Handshake with TLS no newer than ``maximum``: the negotiated version, or the error."""
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = {"1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2,
                               "1.3": ssl.TLSVersion.TLSv1_3}[maximum]
    # Let the client offer old protocols at all; whether they are taken is the server's answer.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=15) as raw, \
                context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
            return {"version": tls.version(), "error": None}
    except (ssl.SSLError, OSError) as error:
        return {"version": None, "error": str(error)}


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["push-image", "push-index", "pull-image", "request", "hammer",
                                            "tls-version"])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--tls-max", default="1.3")
    parser.add_argument("--registry", default="")
    parser.add_argument("--repo")
    parser.add_argument("--tag")
    parser.add_argument("--ref")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--arch", default="amd64")
    parser.add_argument("--archs", default="amd64,arm64")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--layer-size", type=int, default=64 * 1024)
    parser.add_argument("--user")
    parser.add_argument("--cafile")
    parser.add_argument("--url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--dry-run", action="store_true", help="push-image: only compute the digests")
    args = parser.parse_args(argv)

    password = os.environ.get("REGISTRY_PASSWORD")
    registry = Registry(args.registry or args.url or "", args.user, password, args.cafile)

    if args.command == "push-image":
        result = push_image(
            registry, args.repo, args.tag, args.seed, args.arch, args.layers, args.layer_size, args.dry_run
        )
    elif args.command == "push-index":
        children = [
            push_image(registry, args.repo, None, args.seed, arch, args.layers, args.layer_size)
            for arch in args.archs.split(",")
        ]
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": INDEX_TYPE,
                "manifests": [
                    {
                        "mediaType": MANIFEST_TYPE,
                        "digest": child["manifest_digest"],
                        "size": child["manifest_size"],
                        "platform": {"os": "linux", "architecture": child["arch"]},
                    }
                    for child in children
                ],
            },
            sort_keys=True,
        ).encode()
        registry.push_manifest(args.repo, args.tag, index, INDEX_TYPE)
        result = {"index_digest": sha256_digest(index), "children": children}
    elif args.command == "pull-image":
        result = pull_image(registry, args.repo, args.ref)
    elif args.command == "hammer":
        result = hammer(registry, args.url, args.count)
    elif args.command == "tls-version":
        result = tls_version(args.url, args.cafile, args.tls_max)
    else:
        headers = dict(line.split(":", 1) for line in args.header)
        headers = {name.strip(): value.strip() for name, value in headers.items()}
        status, response_headers, body = registry.request(args.method, args.url, headers=headers)
        result = {
            "status": status,
            "headers": response_headers,
            "body_digest": sha256_digest(body),
            "body_size": len(body),
            "body_text": body[:2000].decode("utf-8", "replace"),
        }
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
