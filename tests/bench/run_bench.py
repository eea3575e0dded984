#!/usr/bin/env python3
"""Storage scanner benchmark (not a timed test): the two modules' scans against `find` and a naive scan.

For each size it generates (or reuses) a seeded tree with generate_tree.py, then measures on that
same tree, each in its own child process, warm cache (one warm-up run each, then --reps rounds
interleaved so background load hits every candidate alike; medians reported, target ratios
are medians of the per-round ratios):
  (a) blob scan      scan_blobs(path)
  (b) index audit    audit_indexes(path, registries=<all registries>)
  (c) both           both scans in one walk: scan_storage(path, index_registries=<all>), what the
                     scanner CLI on the VM runs (each link read and each blob stat'ed once for both)
  (f) capacity       (c) with capacity=True: also every blob stat'ed and the bytes per repository counted
  (d) find           find PATH -name link -type f | wc -l
  (e) naive          naive_scan.py (os.walk + isfile + json.load per link)
Wall time from the parent's clock; CPU time from GNU time around the child; peak memory is the
sum of PSS over the child's whole process tree (the scanners fork one process per registry),
sampled every 20 ms, or GNU time's ru_maxrss if that is higher.
The warm-up run of (c) returns every finding; they are compared with the generator's damage.json.

Usage: run_bench.py [--size 100k|1m ...] [--reps N] [--seed S] [--profile] [--only a,b,...] [--json FILE]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
COLLECTIONS = os.path.join(REPO_ROOT, ".collections")
sys.path.insert(0, HERE)

import generate_tree  # noqa: E402  (sibling script, found through sys.path above)

MODES = ("blob", "index", "both", "capacity", "find", "naive")
LABELS = {
    "blob": "(a) registry_blob_scan scan",
    "index": "(b) registry_index_audit scan",
    "both": "(c) both scans, one walk",
    "capacity": "(f) both + capacity figures",
    "find": "(d) find -name link | wc -l",
    "naive": "(e) naive os.walk scan",
}
PEAK_RSS_LIMIT_MB = 300
TIME = "/usr/bin/time"  # GNU time (Debian package `time`)
NAIVE_SPEEDUP_TARGET = 4.0


# --- child side ------------------------------------------------------------------------------

def finding_keys(blob_result, index_result):
    """Finding keys in the generator's damage.json format (see generate_tree.compute_expected)."""
    keys = {}
    if blob_result is not None:
        keys["orphan_layer_links"] = ["%s|%s|%s" % (f["registry"], f["repo"], f["digest"])
                                      for f in blob_result["orphan_layer_links"]]
        keys["invalid_link_files"] = [
            "%s|%s|%s|%s" % (f["registry"], f["repo"], f["kind"],
                             f["digest"][7:] if f["digest"] else os.path.basename(f["path"]))
            for f in blob_result["invalid_link_files"]]
        keys["zero_byte_blobs"] = ["%s|%s" % (f["registry"], f["digest"]) for f in blob_result["zero_byte_blobs"]]
    if index_result is not None:
        keys["orphan_index_children"] = [
            "%s|%s|%s|%s" % (f["registry"], f["repo"], f["index_digest"], f["child_digest"])
            for f in index_result["orphan_index_children"]]
        keys["broken_tags"] = ["%s|%s|%s" % (f["registry"], f["repo"], f["tag"]) for f in index_result["broken_tags"]]
        keys["unservable_blobs"] = ["%s|%s|%s" % (f["registry"], f["repo"], f["digest"])
                                    for f in index_result["unservable_blobs"]]
        keys["invalid_manifests"] = ["%s|%s|%s" % (f["registry"], f["repo"], f["digest"])
                                     for f in index_result["invalid_manifests"]]
    return keys


def child_main(mode, path, out_file, full, profile_file):
    """Runs one candidate in this (child) process and writes its counts as JSON to out_file."""
    report = {}
    if mode == "naive":
        import naive_scan
        start = time.perf_counter()
        report["counts"] = naive_scan.naive_scan(path)
        report["scan_seconds"] = time.perf_counter() - start
    else:
        sys.path.insert(0, COLLECTIONS)
        from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import scan_blobs
        from ansible_collections.regwarden.registry.plugins.module_utils._discovery import find_registries
        from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import audit_indexes
        from ansible_collections.regwarden.registry.plugins.module_utils._storage_scan import scan_storage

        names = [name for name, _ in find_registries(path)]
        profiler = None
        if profile_file:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        start = time.perf_counter()
        # cProfile sees only its own process: profile with the registries one after another.
        processes = 1 if profiler is not None else None
        if mode in ("both", "capacity"):
            blob_result, index_result = scan_storage(path, index_registries=names, processes=processes,
                                                     capacity=mode == "capacity")
        else:
            blob_result = scan_blobs(path, processes=processes) if mode == "blob" else None
            index_result = audit_indexes(path, registries=names, processes=processes) if mode == "index" else None
        report["scan_seconds"] = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_file)
        keys = finding_keys(blob_result, index_result)
        report["counts"] = {cls: len(v) for cls, v in keys.items()}
        report["scan_errors"] = len((blob_result or {}).get("scan_errors", ())) + len(
            (index_result or {}).get("scan_errors", ()))
        if full:
            report["keys"] = keys
            report["summary"] = {"blob_scan": (blob_result or {}).get("summary"),
                                 "index_audit": (index_result or {}).get("summary")}
            errors = (blob_result or {}).get("scan_errors", []) + (index_result or {}).get("scan_errors", [])
            report["scan_error_samples"] = errors[:10]
    with open(out_file, "w") as f:
        json.dump(report, f)


# --- parent side -----------------------------------------------------------------------------

def _memory_kb(pid):
    """Proportional set size of a process (kB): its resident pages, the ones shared with other
    processes (a forked worker shares the interpreter with its parent) divided among them.
    VmRSS where smaps_rollup is missing (kernels before 4.14)."""
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            with open("/proc/%d/%s" % (pid, name)) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1])
        except OSError:
            continue
    return 0


def _process_tree_memory_kb(root_pid):
    """Memory of a process and all its descendants now (kB, sum of PSS), from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total = 0
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        total += _memory_kb(pid)
        stack.extend(children.get(pid, ()))
    return total


def run_child(mode, path, full=False, profile_file=None):
    """Runs one candidate; returns wall seconds, CPU seconds, peak RSS MB and the child's report.

    The candidate runs under /usr/bin/time, which reports the rusage of the process it forks:
    the rusage of a direct child would include this (large) parent's RSS, which a child
    inherits at fork and the kernel keeps as its peak across exec. The scanners fork one
    process per registry, and ru_maxrss is the largest single process, not their sum: so the
    whole process tree's memory (sum of PSS) is also sampled every 20 ms, and the peak
    reported is the larger of the two.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".json", prefix="bench-") as out, \
            tempfile.NamedTemporaryFile("r", suffix=".time", prefix="bench-") as usage:
        if mode == "find":
            argv = ["sh", "-c", 'find "$1" -name link -type f | wc -l > "$2"', "sh", path, out.name]
        else:
            argv = [sys.executable, os.path.abspath(__file__), "--child", mode, "--path", path, "--out", out.name]
            if full:
                argv.append("--full")
            if profile_file:
                argv += ["--profile-file", profile_file]
        start = time.perf_counter()
        proc = subprocess.Popen([TIME, "-f", "%U %S %M", "-o", usage.name, *argv], stdin=subprocess.DEVNULL)
        tree_peak_kb = 0
        while proc.poll() is None:
            tree_peak_kb = max(tree_peak_kb, _process_tree_memory_kb(proc.pid))
            time.sleep(0.02)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError("%s exited with %d" % (mode, proc.returncode))
        user, system, max_rss_kb = usage.read().split()[-3:]
        text = out.read()
    report = {"counts": {"link_files": int(text.strip())}} if mode == "find" else json.loads(text)
    return {"wall": wall, "cpu": float(user) + float(system),
            "rss_mb": max(int(max_rss_kb), tree_peak_kb) / 1024.0, "report": report}


def compare_findings(expected, got_keys):
    """Per finding class: expected count, found count, samples of missing and extra keys."""
    rows = []
    for cls, exp in expected.items():
        want = set(exp["keys"])
        got = set(got_keys.get(cls, ()))
        rows.append({"class": cls, "expected": len(want), "found": len(got),
                     "missing": sorted(want - got), "extra": sorted(got - want)})
    return rows


def fmt_row(cols, widths):
    return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))


def environment():
    """Kernel facts that shape name-lookup costs: the dentry hash size and the dentries cached."""
    facts = []
    try:
        with open("/proc/cmdline") as f:
            facts += [arg for arg in f.read().split() if arg.startswith(("dhash_entries=", "ihash_entries="))]
        with open("/proc/sys/fs/dentry-state") as f:
            facts.append("dentries cached=%s" % f.read().split()[0])
    except OSError:
        pass
    facts.append("cpus=%d" % os.cpu_count())
    try:
        facts.append("loadavg=%.1f" % os.getloadavg()[0])
    except OSError:
        pass
    return ", ".join(facts)


def bench_size(links, seed, reps, profile, log, modes=MODES):
    manifest = generate_tree.ensure_tree(links, seed, log=log)
    path = manifest["path"]
    gen_time = manifest["timings_seconds"]["total"]
    log("tree %s: %d link files (generated in %.1fs)" % (path, manifest["link_files"], gen_time))

    runs = {mode: [] for mode in modes}
    warm = {}
    for mode in modes:
        warm[mode] = run_child(mode, path, full=(mode in ("both", "blob", "index")))
    log("warm-up: %s" % ", ".join("%s %.2fs" % (mode, warm[mode]["wall"]) for mode in modes))
    for rep in range(reps):
        for mode in modes:
            runs[mode].append(run_child(mode, path))
        log("round %d/%d: %s" % (rep + 1, reps, ", ".join(
            "%s %.2fs" % (mode, runs[mode][-1]["wall"]) for mode in modes)))

    results = {}
    for mode in modes:
        samples = runs[mode]
        results[mode] = {
            "wall_median": statistics.median(s["wall"] for s in samples),
            "wall_min": min(s["wall"] for s in samples),
            "cpu_median": statistics.median(s["cpu"] for s in samples),
            "rss_mb": max(s["rss_mb"] for s in [*samples, warm[mode]]),
            "scan_median": statistics.median(s["report"].get("scan_seconds", s["wall"]) for s in samples),
            "counts": warm[mode]["report"]["counts"],
            "warmup_wall": warm[mode]["wall"],
            "rounds_wall": [s["wall"] for s in samples],
            "rounds_cpu": [s["cpu"] for s in samples],
        }

    print()
    print("Tree: %s" % path)
    print("  %d link files, %d repositories, registries %s; generated in %.1fs; reps %d (median), warm cache"
          % (manifest["link_files"], sum(s["repositories"] for s in manifest["stats"].values()),
             ",".join(manifest["registries"]), gen_time, reps))
    print("  environment: %s" % environment())
    widths = (32, 10, 9, 10, 11, 11)
    print(fmt_row(("candidate", "wall s", "min s", "cpu s", "scan s", "peak mem MB"), widths))
    print("  (peak mem: all processes of the candidate together, sum of PSS sampled every 20 ms, or the"
          " largest RSS if higher;\n   the scanners run one process per registry, up to %d at once here)"
          % _scan_processes())
    for mode in modes:
        r = results[mode]
        scan = "%.2f" % r["scan_median"] if mode != "find" else "-"
        print(fmt_row((LABELS[mode], "%.2f" % r["wall_median"], "%.2f" % r["wall_min"], "%.2f" % r["cpu_median"],
                       scan, "%.0f" % r["rss_mb"]), widths))
    if "blob" in results and "index" in results:
        print("  (a)+(b) as two processes: %.2fs wall, %.0f MB peak"
              % (results["blob"]["wall_median"] + results["index"]["wall_median"],
                 max(results["blob"]["rss_mb"], results["index"]["rss_mb"])))

    # Ratios are taken per round (the candidates of one round ran back to back, under the same
    # background load and cache state), then the median over the rounds.
    def round_ratios(num, den):
        return [n["wall"] / d["wall"] for n, d in zip(runs[num], runs[den])]

    targets = {}
    module_rss = [results[m]["rss_mb"] for m in ("blob", "index", "both") if m in results]
    if "both" in results and "find" in results:
        ratios = round_ratios("both", "find")
        targets["both modules faster than find (%.2fx find; rounds %s)" % (
            statistics.median(ratios), " ".join("%.2f" % r for r in ratios))] = statistics.median(ratios) < 1.0
    if "both" in results and "naive" in results:
        ratios = round_ratios("naive", "both")
        targets["both modules >= %.0fx faster than naive (%.2fx; rounds %s)" % (
            NAIVE_SPEEDUP_TARGET, statistics.median(ratios), " ".join("%.2f" % r for r in ratios))] = (
            statistics.median(ratios) >= NAIVE_SPEEDUP_TARGET)
    if module_rss:
        targets["peak memory under %d MB, all processes (%.0f MB)" % (PEAK_RSS_LIMIT_MB, max(module_rss))] = (
            max(module_rss) < PEAK_RSS_LIMIT_MB)
    print("Targets (%s):" % ("binding on this 1M tree" if links >= 1000000 else "informational below 1M links"))
    for name, ok in targets.items():
        print("  %-4s %s" % ("PASS" if ok else "FAIL", name))

    checks_ok = True
    if "find" in results:
        find_count = results["find"]["counts"]["link_files"]
        checks_ok = find_count == manifest["link_files"]
        print("Link files: find %d, generator %d%s" % (
            find_count, manifest["link_files"], "" if checks_ok else "  MISMATCH"))

    # The module findings come from the warm-up run with full output: (c), or (a) and (b).
    got_keys, scan_errors, error_samples = {}, 0, []
    for mode in ("both", "blob", "index"):
        if mode in warm:
            report = warm[mode]["report"]
            got_keys.update(report["keys"])
            scan_errors = max(scan_errors, report.get("scan_errors", 0))
            error_samples = error_samples or report.get("scan_error_samples", [])
    expected = {cls: exp for cls, exp in manifest["expected"].items() if cls in got_keys}
    comparison = compare_findings(expected, got_keys)
    if comparison:
        print("Findings of the modules vs the generator's damage.json (by-design cache partial index children: %d):"
              % manifest["expected_by_design"]["cache_unpulled_index_children"])
    for row in comparison:
        ok = not row["missing"] and not row["extra"]
        checks_ok &= ok
        print("  %-22s expected %6d  found %6d  %s" % (row["class"], row["expected"], row["found"],
                                                      "ok" if ok else "MISMATCH: %d missing, %d extra" % (
                                                          len(row["missing"]), len(row["extra"]))))
        for label in ("missing", "extra"):
            for key in row[label][:3]:
                print("      %s: %s" % (label, key))
    if scan_errors:
        checks_ok = False
        print("  scan_errors: %d, e.g. %s" % (scan_errors, error_samples[:3]))
    if "naive" in results:
        naive_counts = results["naive"]["counts"]
        print("Naive scan counts (isfile only, informational): %s" % ", ".join(
            "%s %d" % (k, naive_counts[k]) for k in ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs",
                                                     "orphan_index_children", "broken_tags", "invalid_manifests")))

    profile_text = None
    if profile:
        profile_text = profile_both(path, log)
        print(profile_text)

    return {
        "links": links, "seed": seed, "path": path, "link_files": manifest["link_files"],
        "generation_seconds": manifest["timings_seconds"], "reps": reps,
        "results": results,
        "targets": targets, "findings": [{k: (v if k in ("class", "expected", "found") else len(v))
                                          for k, v in row.items()} for row in comparison],
        "checks_ok": checks_ok, "all_targets_met": all(targets.values()), "environment": environment(),
        "profile": profile_text,
    }


def _scan_processes():
    sys.path.insert(0, COLLECTIONS)
    from ansible_collections.regwarden.registry.plugins.module_utils._parallel import default_processes
    return default_processes()


def profile_both(path, log):
    import io
    import pstats
    log("profiling (c) under cProfile, registries one after another")
    with tempfile.NamedTemporaryFile(suffix=".prof", prefix="bench-") as prof:
        run_child("both", path, profile_file=prof.name)
        text = io.StringIO()
        stats = pstats.Stats(prof.name, stream=text)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats(25)
    return "cProfile of (c), top by own time then cumulative:\n" + text.getvalue()


def dump_findings(links, seed, out_file, log):
    """Both scans of every registry of the seeded tree, in full, as sorted JSON."""
    generated = generate_tree.ensure_tree(links, seed, log=log)
    sys.path.insert(0, COLLECTIONS)
    from ansible_collections.regwarden.registry.plugins.module_utils._storage_scan import scan_storage

    blob_result, index_result = scan_storage(generated["path"], index_registries=generated["registries"])
    with open(out_file, "w") as handle:
        json.dump({"blob_scan": blob_result, "index_audit": index_result}, handle, sort_keys=True, indent=1)
    log("wrote %s" % out_file)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", action="append", type=generate_tree.parse_count,
                        help="link files in the tree: 100k, 1m (repeatable; default both)")
    parser.add_argument("--reps", type=int, help="timed rounds per size (default 5 below 1M links, 3 at 1M)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of (c)")
    parser.add_argument("--only", type=lambda text: [m.strip() for m in text.split(",")],
                        help="comma-separated subset of the candidates: %s" % ",".join(MODES))
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--dump-findings", metavar="FILE",
                        help="write the full results of both scans (every registry) over each tree to FILE "
                             "(FILE-<links>.json), sorted JSON: compare two code versions byte for byte")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.path, args.out, args.full, args.profile_file)
        return 0
    if not os.access(TIME, os.X_OK):
        print("error: %s not found: install the Debian package `time`" % TIME, file=sys.stderr)
        return 2

    def log(message):
        print("==> " + message, file=sys.stderr, flush=True)

    modes = tuple(m for m in MODES if m in args.only) if args.only else MODES
    unknown = sorted(set(args.only or ()) - set(MODES))
    if unknown or not modes:
        print("error: --only takes candidates from %s (got %s)" % (",".join(MODES), ",".join(args.only)),
              file=sys.stderr)
        return 2
    if args.dump_findings:
        for links in args.size or [100000, 1000000]:
            dump_findings(links, args.seed, "%s-%d.json" % (args.dump_findings, links), log)
        return 0
    all_results = []
    try:
        for links in args.size or [100000, 1000000]:
            reps = args.reps or (3 if links >= 1000000 else 5)
            all_results.append(bench_size(links, args.seed, reps, args.profile, log, modes))
    except RuntimeError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f, indent=1)
    failed = [r for r in all_results if not r["checks_ok"] or (r["links"] >= 1000000 and not r["all_targets_met"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
