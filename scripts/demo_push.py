#!/usr/bin/env python3
"""Push the demo's sample multi-arch image (OCI index: linux/amd64 + linux/arm64/v8, with
attestations as buildx makes them) to the demo's private registry, then pull it back.

Usage: demo_push.py URL USERNAME PASSWORD_FILE CA_FILE [REPO] [TAG]
Uses the project's registry client (tests/support/oci.py); run with the repo root on PYTHONPATH.
"""

from __future__ import annotations

import sys

import requests

from tests.support.oci import RegistryClient, RegistryHTTPError, make_multiarch


def main(argv: list[str]) -> int:
    if len(argv) not in (5, 6, 7):
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    url, username, password_file, ca_file = argv[1:5]
    repo = argv[5] if len(argv) > 5 else "demo/app"
    tag = argv[6] if len(argv) > 6 else "v1"
    with open(password_file, encoding="utf-8") as handle:
        password = handle.read().strip()

    session = requests.Session()
    # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment would override session.verify, and a
    # proxy from the environment has no business with 127.0.0.1.
    session.trust_env = False
    session.auth = (username, password)
    session.verify = ca_file
    client = RegistryClient(url, session=session, timeout=30)
    image = make_multiarch(seed="regwarden-demo")
    try:
        digest = client.push(repo, image, tag=tag)
        report = client.pull(repo, tag)
    except (RegistryHTTPError, requests.RequestException) as exc:
        print(f"push to {url} failed: {exc}", file=sys.stderr)
        return 1
    platforms = [
        "/".join(filter(None, (c.platform["os"], c.platform["architecture"], c.platform.get("variant"))))
        for c in image.children
        if not c.is_attestation
    ]
    print(f"pushed {repo}:{tag} = {digest} (OCI index: {', '.join(platforms)} + attestations)")
    if not report.ok:
        print("pull back failed:\n  " + "\n  ".join(report.problems), file=sys.stderr)
        return 1
    print(f"pulled back {report.manifests} manifests and {report.blobs} blobs, all digests verified")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
