#!/usr/bin/env python3
"""S3 scanner benchmark (not a timed test): the scan over a bucket beside the registry's own GC mark.

It takes the 100k-link benchmark tree (generate_tree.py, reused), uploads it once into a bucket
of a local SeaweedFS (kept under .cache/bench/ with the tree, so later runs skip the upload),
then measures on that bucket:
  (a) cold scan   scan_storage over S3 (blob scan + index audit of every registry, one listing
                  each), with an empty manifest cache
  (b) warm scan   the same with the cache (a) filled: a digest's content never changes
  (c) GC mark     docker-registry garbage-collect --dry-run, one run per registry (what a GC on
                  S3 has to walk before it can sweep), beside a cold scan of that registry alone.
                  The tree is damaged on purpose: GC's mark aborts at the first manifest it cannot
                  parse, so a registry where it aborts is shown but not compared
  (d) verify     the cold scan with s3.verify_links (a GET of every link file), once
and prints wall times and request counts (LIST, GET, manifest cache hits/misses) and checks:
  - the findings of (d) equal the filesystem scan of the same tree (paths relative to the parent);
    (a) and (b) judge links by their size, so they miss the 71-byte links naming another digest;
  - on every registry whose GC mark completes, the cold scan is at least 20x faster;
  - the warm scan makes at most ceil(keys/1000) LISTs per registry and GETs no manifest.
Exit status 1 when a check fails, 2 on an error.

Usage: run_s3_bench.py [--links 100k] [--seed 1] [--reps 3] [--json FILE]
"""

import argparse
import concurrent.futures
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, REPO_ROOT, os.path.join(REPO_ROOT, ".collections")]

import generate_tree  # noqa: E402

from ansible_collections.regwarden.registry.plugins.module_utils._s3_view import S3Storage  # noqa: E402
from ansible_collections.regwarden.registry.plugins.module_utils._storage_scan import scan_storage  # noqa: E402
from tests.support.registry import DOCKER_REGISTRY, Registry, registry_environment  # noqa: E402
from tests.support.seaweed import S3Target, SeaweedS3  # noqa: E402

BUCKET = "bench"
PREFIX = "registries"
GC_SPEEDUP_TARGET = 20.0
GC_TIMEOUT_S = 3600
LISTS = ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs", "corrupt_blobs")
AUDIT_LISTS = ("orphan_index_children", "broken_tags", "unservable_blobs", "invalid_manifests")


def log(text):
    print(text, flush=True)


def files_of(root):
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, root), full


def upload(server, root):
    """Every file of the tree as an object <PREFIX>/<relative path>; empty ones last (SeaweedFS
    4.48 stalls a kept-alive connection's next non-empty PUT after an empty one)."""
    client = server.client
    files = sorted(files_of(root))
    empty = [item for item in files if os.path.getsize(item[1]) == 0]
    full = [item for item in files if os.path.getsize(item[1]) > 0]

    def put(item):
        rel, path = item
        with open(path, "rb") as handle:
            client.put_object(Bucket=BUCKET, Key="%s/%s" % (PREFIX, rel), Body=handle.read())

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        for done, _ in enumerate(pool.map(put, full), start=1):
            if done % 20000 == 0:
                log("  uploaded %d/%d objects (%.0fs)" % (done, len(files), time.monotonic() - started))
    for item in empty:
        put(item)
    return len(files), time.monotonic() - started


def ensure_bucket(server, root, marker):
    if os.path.exists(marker):
        with open(marker) as handle:
            facts = json.load(handle)
        log("reusing the uploaded bucket (%d objects, uploaded in %.0fs)" % (facts["objects"], facts["seconds"]))
        return facts
    server.create_bucket(BUCKET)
    log("uploading %s to s3://%s/%s/ ..." % (root, BUCKET, PREFIX))
    objects, seconds = upload(server, root)
    facts = {"objects": objects, "seconds": seconds}
    with open(marker, "w") as handle:
        json.dump(facts, handle)
    log("uploaded %d objects in %.0fs" % (objects, seconds))
    return facts


def requests_of(result):
    total = {}
    for counts in result["summary"].values():
        for key, value in (counts.get("storage_requests") or {}).items():
            total[key] = total.get(key, 0) + value
    return total


def s3_scan(settings, registries, blob_registries=None):
    started = time.monotonic()
    blob, index = scan_storage(S3Storage(settings), blob_registries=blob_registries, index_registries=registries,
                               allow_incomplete=True)
    return time.monotonic() - started, blob, index


def comparable(blob, index, root):
    text = json.dumps({"blob": {k: blob[k] for k in LISTS}, "index": {k: index[k] for k in AUDIT_LISTS}},
                      sort_keys=True).replace(root, "ROOT")
    return json.loads(text.replace("blob directory missing", "blob data missing"))


def gc_mark(target, name, work_dir):
    registry = Registry(name, work_dir, work_dir, s3=target)
    config = os.path.join(work_dir, "%s.gc.json" % name)
    with open(config, "w") as handle:
        json.dump(registry.config(), handle)
    started = time.monotonic()
    proc = subprocess.run([DOCKER_REGISTRY, "garbage-collect", "--dry-run", config], env=registry_environment(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=GC_TIMEOUT_S, check=False)
    seconds = time.monotonic() - started
    failure = None
    if proc.returncode != 0:
        failure = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:160]
    return seconds, failure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=generate_tree.parse_count, default=100000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="rounds of (a), (b) and (c); medians reported")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    manifest = generate_tree.ensure_tree(args.links, args.seed, log=log)
    root = manifest["path"]
    registries = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name, "docker")))
    store = os.path.join(os.path.dirname(root), "seaweed")
    os.makedirs(store, exist_ok=True)
    work = tempfile.mkdtemp(prefix="s3bench-")
    failures = []
    try:
        with SeaweedS3(store) as server:
            facts = ensure_bucket(server, root, os.path.join(store, "uploaded.json"))
            target = S3Target(server, BUCKET, PREFIX)
            keys = {name: len(server.keys(BUCKET, "%s/%s/" % (PREFIX, name))) for name in registries}
            log("bucket: %d keys (%s)" % (sum(keys.values()), ", ".join("%s %d" % kv for kv in sorted(keys.items()))))

            fs_blob, fs_index = scan_storage(root, index_registries=registries, allow_incomplete=True)
            cold, warm = [], []
            gc = {name: [] for name in registries}
            alone = {name: [] for name in registries}
            for rep in range(args.reps):
                cache = os.path.join(work, "cache-%d" % rep)
                settings = target.settings(cache_dir=cache)
                cold.append(s3_scan(settings, registries))
                warm.append(s3_scan(settings, registries))
                shutil.rmtree(cache, ignore_errors=True)
                for name in registries:
                    gc[name].append(gc_mark(target, name, work))
                    alone_cache = os.path.join(work, "alone-%s-%d" % (name, rep))
                    alone[name].append(s3_scan(target.settings(cache_dir=alone_cache), [name], [name])[0])
                    shutil.rmtree(alone_cache, ignore_errors=True)
                log("round %d: cold %.2fs, warm %.2fs; GC mark %s" % (
                    rep + 1, cold[-1][0], warm[-1][0],
                    ", ".join("%s %.1fs%s" % (n, gc[n][-1][0], "" if gc[n][-1][1] is None else " (aborted)")
                              for n in registries)))
            verify = s3_scan(target.settings(cache_dir=os.path.join(work, "cache-verify"), verify_links=True),
                             registries)
            log("verify_links: %.2fs" % verify[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    _seconds, blob, index = verify
    if comparable(blob, index, "s3://%s/%s" % (BUCKET, PREFIX)) != comparable(fs_blob, fs_index, root):
        failures.append("the S3 findings (verify_links) differ from the filesystem scan of the same tree")
    else:
        log("(d) findings equal the filesystem scan's, entry for entry")
    cold_s = statistics.median(c[0] for c in cold)
    warm_s = statistics.median(w[0] for w in warm)
    cold_requests = requests_of(cold[0][2])
    warm_requests = requests_of(warm[0][2])
    log("")
    log("%-34s %10s %8s %8s %12s %12s" % ("candidate", "wall s", "LIST", "GET", "cache hits", "cache misses"))
    for label, seconds, requests in (("(a) S3 scan, cold cache", cold_s, cold_requests),
                                     ("(b) S3 scan, warm cache", warm_s, warm_requests),
                                     ("(d) cold, verify_links", verify[0], requests_of(verify[2]))):
        log("%-34s %10.2f %8d %8d %12d %12d" % (label, seconds, requests.get("list", 0), requests.get("get", 0),
                                                requests.get("manifest_cache_hits", 0),
                                                requests.get("manifest_cache_misses", 0)))
    log("")
    log("%-12s %8s %18s %16s %9s  %s" % ("registry", "keys", "(c) GC mark s", "cold scan alone s", "ratio", "GC"))
    gc_figures = {}
    for name in registries:
        gc_s = statistics.median(seconds for seconds, _failure in gc[name])
        scan_s = statistics.median(alone[name])
        failure = gc[name][0][1]
        gc_figures[name] = {"gc_seconds": gc_s, "scan_seconds": scan_s, "gc_failure": failure}
        log("%-12s %8d %18.2f %16.2f %8.1fx  %s" % (name, keys[name], gc_s, scan_s, gc_s / scan_s,
                                                   "completed" if failure is None else "aborted: " + failure))
        if failure is None and gc_s / scan_s < GC_SPEEDUP_TARGET:
            failures.append("%s: the cold S3 scan is only %.1fx faster than the GC mark" % (name, gc_s / scan_s))
    if all(figures["gc_failure"] for figures in gc_figures.values()):
        failures.append("GC's mark aborted on every registry: nothing to compare with")
    log("")
    log("keys %d; findings: %d blob scan, %d index audit" % (
        sum(keys.values()), sum(blob["totals"][k] for k in LISTS), sum(index["totals"][k] for k in AUDIT_LISTS)))
    for name, count in sorted(keys.items()):
        lists = index["summary"][name]["storage_requests"]["list"]
        pages = math.ceil(count / 1000)
        warm_lists = warm[0][2]["summary"][name]["storage_requests"]["list"]
        log("%s: %d keys, %d LIST cold, %d LIST warm (ceil(keys/1000) = %d)" % (name, count, lists, warm_lists, pages))
        if warm_lists > pages:
            failures.append("%s: %d LISTs warm, more than %d" % (name, warm_lists, pages))
    if warm_requests.get("manifest_cache_misses", 0):
        failures.append("the warm scan GOT %d manifests" % warm_requests["manifest_cache_misses"])
    log("warm GETs: %d (links of the wrong size; %d tag links from the link cache)"
        % (warm_requests.get("get", 0), warm_requests.get("link_cache_hits", 0)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"keys": keys, "upload": facts, "cold_seconds": cold_s, "warm_seconds": warm_s,
                       "gc_mark": gc_figures, "cold_requests": cold_requests, "warm_requests": warm_requests,
                       "failures": failures}, handle, indent=2)
    for failure in failures:
        log("FAILED: " + failure)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(2) from None
