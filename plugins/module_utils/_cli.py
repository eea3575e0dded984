# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Maintenance on the registry VM: the modules' own code, run by systemd timers without Ansible.

    PYTHONPATH=<dir holding ansible_collections> python3 -m \
        ansible_collections.regwarden.registry.plugins.module_utils._cli COMMAND [options]

    scan         registry_blob_scan + registry_index_audit; --report JSON, --prom textfile
    tag-cleanup  registry_tag_cleanup (run it with the registry read-only, then GC and restart)
    probe        registry_probe over HTTP(S); --prom textfile with the last success time
    maintenance  mark a registry stopped (or back) for maintenance; --prom textfile
    gc-record    record one registry's garbage-collect run (its output on stdin); --prom textfile
    pull-record  fold nginx's log of manifest pulls into each registry's pull records
    cache-evict  bring a pull-through cache under its size bound (stopped, before its GC)
    remove-orphans  remove layer links whose blob data is gone (a cache, after its GC)

Exit status: 0 clean / done, 1 findings present, 2 could not run or could not read everything
(bad input, a registry missing or unreadable, unreachable, authentication failed, any error at
all: the report and the metrics then say so). The units accept only 0 and 1 as success.
"""

import argparse
import json
import os
import re
import stat
import sys
import time
import traceback

from ansible_collections.regwarden.registry.plugins.module_utils._files import read_small, write_atomically

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2

DEFAULT_MAX_FINDINGS = 10000


class CommandError(Exception):
    """Bad input to a command: a plain message, exit 2."""


def _names(value):
    return [name for name in (part.strip() for part in value.split(",")) if name] if value else None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="regwarden",
        description="Registry maintenance with the regwarden.registry collection's own code.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    scan = commands.add_parser("scan", help="scan storage for damage (blob scan + index audit)")
    scan.add_argument("--path", default="/opt/registry/data", help="directory holding one directory per registry")
    _storage_arguments(scan)
    scan.add_argument("--registries", help="comma-separated registries for the blob scan (default: all)")
    scan.add_argument("--index-registries", default="private",
                      help="comma-separated registries for the index audit (default: private); each must exist")
    scan.add_argument("--expect-registries",
                      help="comma-separated registries that must be there and be scanned whole (the role passes "
                           "every registry it runs); a missing or unreadable one is an error (exit 2)")
    scan.add_argument("--max-findings", type=int, default=DEFAULT_MAX_FINDINGS,
                      help="entries kept per findings list in the report (the true counts are in 'totals')")
    scan.add_argument("--verify-digests", action="store_true", help="hash every blob (expensive)")
    scan.add_argument("--s3-registries",
                      help="comma-separated registries of this filesystem scan that are kept in S3 (--s3-config); "
                           "the others are read under --path")
    scan.add_argument("--capacity", action="store_true",
                      help="also where the bytes are: blob data per registry and repository (unique and shared), "
                           "blobs no repository links, abandoned uploads")
    scan.add_argument("--pull-records", help="with --capacity: each repository's last pull from the pull records "
                                             "in this directory (pull-record's --state-dir)")
    scan.add_argument("--report", help="write the JSON report here (atomically)")
    scan.add_argument("--prom", help="write Prometheus textfile metrics here (atomically)")

    cleanup = commands.add_parser("tag-cleanup", help="keep the newest tags per repository")
    cleanup.add_argument("--path", default="/opt/registry/data")
    _storage_arguments(cleanup)
    cleanup.add_argument("--registries", default="private", help="comma-separated registries (default: private)")
    cleanup.add_argument("--keep", type=int, default=10, help="tags to keep per repository, newest first")
    cleanup.add_argument("--pushed-within", type=int,
                         help="seconds: every tag pushed this recently is kept as well (retention by age)")
    cleanup.add_argument("--pulled-within", type=int,
                         help="seconds: every tag pulled this recently is kept as well (needs --pull-records)")
    cleanup.add_argument("--keep-last-pulled", type=int,
                         help="the most recently pulled tags kept as well, per repository (needs --pull-records)")
    cleanup.add_argument("--pull-records", help="directory of the pull records (pull-record's --state-dir)")
    cleanup.add_argument("--include", help="regular expression of tags considered for removal")
    cleanup.add_argument("--exclude", help="regular expression of tags never removed")
    cleanup.add_argument("--rules", help="JSON list of per-repository rules {repository, keep, pushed_within, "
                                         "pulled_within, keep_last_pulled, include, exclude}")
    cleanup.add_argument("--delete-untagged", action="store_true",
                         help="also unlink manifests no remaining tag reaches (never children of kept indexes)")
    cleanup.add_argument("--grace-period", type=int, default=3600,
                         help="seconds: tags, revisions and links written this recently are never removed")
    cleanup.add_argument("--report", help="write the JSON report here (atomically)")

    maintenance = commands.add_parser("maintenance", help="record that a registry is (no longer) in maintenance")
    maintenance.add_argument("--registry", required=True, help="the registry stopped or read-only for maintenance")
    maintenance.add_argument("--state", required=True, choices=("on", "off"))
    maintenance.add_argument("--state-dir", default="/run/regwarden/maintenance",
                             help="one file per registry in maintenance (tmpfs: a reboot ends every maintenance)")
    maintenance.add_argument("--prom", required=True, help="write the Prometheus textfile here (atomically)")

    gc_record = commands.add_parser("gc-record", help="record a registry's garbage-collect run (output on stdin)")
    gc_record.add_argument("--registry", required=True, help="the registry collected")
    gc_record.add_argument("--success", required=True, choices=("0", "1"), help="1 if the run succeeded")
    gc_record.add_argument("--duration", required=True, type=float, help="seconds the run took")
    gc_record.add_argument("--bytes-freed", type=int, help="bytes of blob data the run freed, when measured")
    gc_record.add_argument("--state-dir", default="/var/lib/regwarden/gc",
                           help="one file per registry: the last run of each (kept across reboots)")
    gc_record.add_argument("--prom", required=True, help="write the Prometheus textfile here (atomically)")

    evict = commands.add_parser("cache-evict", help="bring a pull-through cache under its size bound (before its GC)")
    evict.add_argument("--path", default="/opt/registry/data")
    _storage_arguments(evict)
    evict.add_argument("--registry", required=True, help="the cache")
    evict.add_argument("--max-size", required=True, type=int, help="bytes of blob data the cache may hold")
    evict.add_argument("--pull-records", help="directory of the pull records (pull-record's --state-dir)")
    evict.add_argument("--grace-period", type=int, default=3600,
                       help="seconds: nothing used (pulled, written) this recently is evicted")
    evict.add_argument("--report", help="write the JSON report here (atomically)")

    orphans = commands.add_parser("remove-orphans",
                                  help="remove layer links whose blob data is gone (after a cache's GC)")
    orphans.add_argument("--path", default="/opt/registry/data")
    _storage_arguments(orphans)
    orphans.add_argument("--registries", required=True, help="comma-separated registries")
    orphans.add_argument("--report", help="write the JSON report here (atomically)")

    pulls = commands.add_parser("pull-record", help="fold nginx's manifest log into each registry's pull records")
    pulls.add_argument("--registries", required=True, help="comma-separated registries")
    pulls.add_argument("--log-dir", default="/var/log/regwarden/pulls", help="nginx's <registry>.log files")
    pulls.add_argument("--state-dir", default="/var/lib/regwarden/pulls", help="one <registry>.json of records each")
    pulls.add_argument("--max-entries", type=int, default=200000,
                       help="last-pull times kept per registry (the oldest go first)")
    pulls.add_argument("--rotate-bytes", type=int, default=64 * 1024 * 1024,
                       help="a log read past this size is renamed to <registry>.log.1 (then reopen nginx's logs)")

    probe = commands.add_parser("probe", help="walk a registry over HTTP(S) the way a client pulls")
    probe.add_argument("--url", required=True)
    probe.add_argument("--username")
    probe.add_argument("--username-file", help="file holding the user name (no quoting needed in a unit file)")
    probe.add_argument("--password-file", help="file holding the password (never pass it on the command line)")
    probe.add_argument("--ca-path", help="CA bundle that signs the registry's certificate")
    probe.add_argument("--insecure", action="store_true", help="do not validate the TLS certificate")
    probe.add_argument("--timeout", type=float, default=30.0)
    probe.add_argument("--concurrency", type=int, help="requests in flight at once (default 4)")
    probe.add_argument("--verify-blobs", action="store_true", help="GET every blob and check size and sha256")
    probe.add_argument("--max-entries", type=int, help="entries kept from one listing (default 100000)")
    probe.add_argument("--deadline", type=float, help="seconds the whole probe may take (default 3600)")
    probe.add_argument("--repositories", help="comma-separated repositories (default: the catalog)")
    probe.add_argument("--tags", help="comma-separated tag globs (default: all tags)")
    probe.add_argument("--report", help="write the JSON report here (atomically)")
    probe.add_argument("--prom", help="write Prometheus textfile metrics here (atomically)")
    return parser.parse_args(argv)


def _storage_arguments(parser):
    parser.add_argument("--storage", choices=("filesystem", "s3"), default="filesystem",
                        help="where the registries keep their data (default: filesystem, under --path)")
    parser.add_argument("--s3-config",
                        help="with --storage s3: JSON file of the s3 settings (endpoint_url, bucket, prefix, region, "
                             "access_key, secret_key, ca_bundle, validate_certs, verify_links); mode 0600 when it "
                             "holds a secret")


def read_s3_config(path):
    """The s3 settings of ``path``: a regular file (no symlink), not readable by group or others when it
    holds a secret. Errors name the file, never its content."""
    if not path:
        raise CommandError("--storage s3 needs --s3-config FILE")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise CommandError("cannot open --s3-config %s: %s" % (path, exc.strerror or exc)) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CommandError("--s3-config %s is not a regular file" % path)
        text = handle.read(65536 + 1)
    if len(text) > 65536:
        raise CommandError("--s3-config %s is larger than 64 KiB" % path)
    try:
        settings = json.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CommandError("--s3-config %s is not a JSON object of settings" % path) from None
    if not isinstance(settings, dict):
        raise CommandError("--s3-config %s is not a JSON object of settings" % path)
    if settings.get("secret_key") and info.st_mode & 0o077:
        raise CommandError("--s3-config %s holds a secret and is readable by others (mode %04o): chmod 600 it"
                           % (path, stat.S_IMODE(info.st_mode)))
    return settings


def storage_from_args(args):
    """The --path, or the S3 backend of --s3-config."""
    if args.storage != "s3":
        return args.path
    from ansible_collections.regwarden.registry.plugins.module_utils._s3_view import S3Storage

    return S3Storage(read_s3_config(args.s3_config))


def run_scan(args):
    from ansible_collections.regwarden.registry.plugins.module_utils import _blob_scan, _index_audit
    from ansible_collections.regwarden.registry.plugins.module_utils._driver import as_storage
    from ansible_collections.regwarden.registry.plugins.module_utils._storage_scan import scan_storage

    s3_names = _names(args.s3_registries) or []
    if s3_names and args.storage == "s3":
        raise CommandError("--s3-registries names the registries of a filesystem scan that are in S3; with "
                           "--storage s3 every registry is")
    expected = _names(args.expect_registries) or []
    wanted = _names(args.registries)
    index_names = _names(args.index_registries) or []

    def scan(storage, blob_registries, holds):
        """One storage's scan: ``blob_registries`` (None: all there), the index registries it ``holds``."""
        if blob_registries == []:
            return []
        return [scan_storage(storage, blob_registries=blob_registries,
                             index_registries=[name for name in index_names if holds(name)],
                             verify_digests=args.verify_digests, allow_incomplete=True,
                             max_findings=args.max_findings, capacity=args.capacity)]

    def every(storage, excluded):
        """Every registry there, and the expected ones whether there or not (missing is an error)."""
        present = {name for name, _location in storage.select(None)[0]}
        return sorted((present | set(expected)) - excluded)

    if not s3_names:
        storage = as_storage(storage_from_args(args))
        results = scan(storage, wanted if wanted is not None else (every(storage, set()) if expected else None),
                       lambda name: True)
        parts = [storage]
    else:
        from ansible_collections.regwarden.registry.plugins.module_utils._s3_view import S3Storage

        in_s3 = set(s3_names)
        filesystem, bucket = as_storage(args.path), S3Storage(read_s3_config(args.s3_config))
        parts = [filesystem, bucket]
        # The filesystem part without the S3 registries, the S3 part with exactly those.
        results = scan(filesystem, [name for name in wanted if name not in in_s3] if wanted is not None
                       else every(filesystem, in_s3), lambda name: name not in in_s3)
        results += scan(bucket, [name for name in wanted if name in in_s3] if wanted is not None else sorted(in_s3),
                        lambda name: name in in_s3)
    if not results:
        raise CommandError("nothing to scan: every registry named is excluded")
    blob, index = results[0]
    for more_blob, more_index in results[1:]:
        blob = _merge_scans(blob, more_blob, _blob_scan.analysis().finish_result)
        index = _merge_scans(index, more_index, _index_audit.analysis().finish_result)
    if args.pull_records:
        if not args.capacity:
            raise CommandError("--pull-records adds the last pulls to the capacity figures: it needs --capacity")
        from ansible_collections.regwarden.registry.plugins.module_utils import _pull_records

        _pull_records.annotate_capacity(blob["capacity"], args.pull_records)
    storage = parts[0]
    report_path = storage.describe() if storage.kind == "s3" else os.path.abspath(args.path)
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "path": report_path,
        **({"s3": parts[1].describe()} if s3_names else {}),
        "findings": _blob_scan.count_findings(blob, include_errors=False)
        + _index_audit.count_findings(index, include_errors=False),
        "scan_errors": sorted({_error_key(e): e for e in blob["scan_errors"] + index["scan_errors"]}.values(),
                              key=_error_key),
        "incomplete_registries": sorted(set(blob["incomplete_registries"]) | set(index["incomplete_registries"])),
        "blob_scan": blob,
        "index_audit": index,
    }


def _merge_scans(first, second, finish):
    """One result of two finished ones (a filesystem part and an S3 part of the same scan)."""
    merged = {}
    for key in set(first) | set(second):
        a, b = first.get(key), second.get(key)
        if key == "totals":
            a, b = a or {}, b or {}
            merged[key] = {name: a.get(name, 0) + b.get(name, 0) for name in set(a) | set(b)}
        elif key == "truncated":
            merged[key] = sorted(set(a or []) | set(b or []))
        elif isinstance(a if a is not None else b, list):
            merged[key] = (a or []) + (b or [])
        elif isinstance(a if a is not None else b, dict):
            merged[key] = {**(a or {}), **(b or {})}
        elif isinstance(a if a is not None else b, bool):
            merged[key] = bool(a) or bool(b)
        else:
            merged[key] = a if a is not None else b
    finish(merged)
    return merged


def _error_key(error):
    return error["registry"], error["path"], error["error"]


def _escape_label(value):
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_scan_prom(report, success, now):
    """Prometheus text exposition: finding counts by registry and kind, scan errors and whether each
    registry was scanned whole, last run time, success."""
    from ansible_collections.regwarden.registry.plugins.module_utils._blob_scan import FINDING_KEYS as BLOB_KINDS
    from ansible_collections.regwarden.registry.plugins.module_utils._index_audit import (
        FINDING_KEYS as INDEX_KINDS,
    )

    lines = [
        "# HELP regwarden_scan_findings Storage findings of the last scan, by registry and kind.",
        "# TYPE regwarden_scan_findings gauge",
    ]
    registries = set()
    if report is not None:
        sections = ((report["blob_scan"], BLOB_KINDS), (report["index_audit"], INDEX_KINDS))
        for section, kinds in sections:
            for registry in sorted(section["summary"]):
                registries.add(registry)
                for kind in kinds:
                    lines.append('regwarden_scan_findings{registry="%s",kind="%s"} %d'
                                 % (_escape_label(registry), kind, section["summary"][registry][kind]))
        registries.update(name for name in report["incomplete_registries"] if name)
        errors = {}
        for error in report["scan_errors"]:
            if error["registry"]:
                errors[error["registry"]] = errors.get(error["registry"], 0) + 1
        lines += [
            "# HELP regwarden_scan_errors Places the last scan could not read, by registry (not judged).",
            "# TYPE regwarden_scan_errors gauge",
        ]
        lines += ['regwarden_scan_errors{registry="%s"} %d' % (_escape_label(name), errors.get(name, 0))
                  for name in sorted(registries | set(errors))]
        lines += [
            "# HELP regwarden_scan_registry_scanned 1 if the last scan read the registry whole, 0 if it could not.",
            "# TYPE regwarden_scan_registry_scanned gauge",
        ]
        incomplete = set(report["incomplete_registries"])
        lines += ['regwarden_scan_registry_scanned{registry="%s"} %d'
                  % (_escape_label(name), 0 if name in incomplete else 1) for name in sorted(registries)]
    if report is not None and report["blob_scan"].get("capacity"):
        lines += _capacity_lines(report["blob_scan"]["capacity"])
    lines += [
        "# HELP regwarden_scan_last_run_timestamp_seconds When the last scan finished.",
        "# TYPE regwarden_scan_last_run_timestamp_seconds gauge",
        "regwarden_scan_last_run_timestamp_seconds %d" % now,
        "# HELP regwarden_scan_success 1 if the last scan read everything it should, 0 if not (see the report).",
        "# TYPE regwarden_scan_success gauge",
        "regwarden_scan_success %d" % (1 if success else 0),
    ]
    return "\n".join(lines) + "\n"


# Per-repository series only for the largest repositories of each registry: a registry with
# thousands of repositories must not become thousands of series (the report has them all).
CAPACITY_TOP_REPOSITORIES = 20
_CAPACITY_REGISTRY_METRICS = (
    ("blob_bytes", "regwarden_capacity_blob_bytes", "Bytes of blob data in the registry."),
    ("blobs", "regwarden_capacity_blobs", "Blobs with data in the registry."),
    ("unlinked_bytes", "regwarden_capacity_unlinked_bytes",
     "Bytes of blobs no repository links (plain garbage-collect frees at least these)."),
    ("unlinked_blobs", "regwarden_capacity_unlinked_blobs", "Blobs no repository links."),
    ("upload_bytes", "regwarden_capacity_upload_bytes", "Bytes of unfinished uploads (_uploads)."),
    ("uploads", "regwarden_capacity_uploads", "Unfinished upload sessions (_uploads)."),
    ("oldest_upload_age_seconds", "regwarden_capacity_oldest_upload_age_seconds",
     "Age of the oldest unfinished upload."),
    ("untagged_manifests", "regwarden_capacity_untagged_manifests",
     "Manifests with a revision link that no tag reaches (directly or through an index)."),
    ("untagged_bytes", "regwarden_capacity_untagged_bytes",
     "Bytes tag cleanup's delete_untagged and a garbage-collect would free (what only those manifests use)."),
)


def _capacity_lines(capacity):
    lines = []
    for field, metric, help_text in _CAPACITY_REGISTRY_METRICS:
        lines += ["# HELP %s %s" % (metric, help_text), "# TYPE %s gauge" % metric]
        lines += ['%s{registry="%s"} %d' % (metric, _escape_label(name), figures[field])
                  for name, figures in sorted(capacity.items()) if figures.get(field) is not None]
    lines += ["# HELP regwarden_capacity_repository_bytes Blob data a repository links, unique to it or shared "
              "(the %d largest repositories of each registry)." % CAPACITY_TOP_REPOSITORIES,
              "# TYPE regwarden_capacity_repository_bytes gauge"]
    for name, figures in sorted(capacity.items()):
        for repo, repo_figures in _largest(figures):
            for kind in ("unique", "shared"):
                lines.append('regwarden_capacity_repository_bytes{registry="%s",repository="%s",sharing="%s"} %d'
                             % (_escape_label(name), _escape_label(repo), kind, repo_figures[kind + "_bytes"]))
    pulled = [(name, repo, repo_figures["last_pulled"]) for name, figures in sorted(capacity.items())
              for repo, repo_figures in _largest(figures) if repo_figures.get("last_pulled") is not None]
    if pulled:
        # With the sizes above: the largest repositories nobody pulls any more.
        lines += ["# HELP regwarden_capacity_repository_last_pull_timestamp_seconds When a manifest of the repository "
                  "was last pulled (the %d largest repositories of each registry, from the pull records)."
                  % CAPACITY_TOP_REPOSITORIES,
                  "# TYPE regwarden_capacity_repository_last_pull_timestamp_seconds gauge"]
        lines += ['regwarden_capacity_repository_last_pull_timestamp_seconds{registry="%s",repository="%s"} %d'
                  % (_escape_label(name), _escape_label(repo), when) for name, repo, when in pulled]
    return lines


def _largest(figures):
    return sorted(figures["repositories"].items(),
                  key=lambda item: (-item[1]["linked_bytes"], item[0]))[:CAPACITY_TOP_REPOSITORIES]


def _write_report(path, payload):
    if path:
        write_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _say(stream, line):
    """One line for the timer's journal: the result on stdout, the error on stderr."""
    stream.write(line + "\n")
    stream.flush()


def _scan_complete(report):
    return not report["scan_errors"] and not report["incomplete_registries"]


def command_scan(args):
    report = None
    error = None
    try:
        report = run_scan(args)
        if not _scan_complete(report):
            error = "could not read everything (%d scan errors%s); see scan_errors in the report" % (
                len(report["scan_errors"]),
                ", incomplete: " + ", ".join(name or "(none found)" for name in report["incomplete_registries"])
                if report["incomplete_registries"] else "")
    except CommandError as exc:
        error = str(exc)
    except _scan_error_types() as exc:
        error = str(exc)
    _write_report(args.report, report if report is not None else {"error": error, "generated_at": _now_text()})
    if args.prom:
        write_atomically(args.prom, render_scan_prom(report, error is None, int(time.time())))
    if error is not None:
        _say(sys.stderr, "regwarden scan: %s" % error)
        return EXIT_ERROR
    summary = {"blob_scan": report["blob_scan"]["summary"], "index_audit": report["index_audit"]["summary"]}
    _say(sys.stdout, json.dumps({"findings": report["findings"], "summary": summary}, sort_keys=True))
    return EXIT_FINDINGS if report["findings"] else EXIT_CLEAN


def _scan_error_types():
    from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError

    return (ScanError,)


def _now_text():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def command_tag_cleanup(args):
    from ansible_collections.regwarden.registry.plugins.module_utils import _tag_cleanup

    def run():
        try:
            rules = json.loads(args.rules) if args.rules else None
        except ValueError as exc:
            raise CommandError("--rules is not valid JSON: %s" % exc) from None
        if rules is not None and not isinstance(rules, list):
            raise CommandError("--rules must be a JSON list of objects")
        return _tag_cleanup.cleanup_tags(
            storage_from_args(args), args.keep, include=args.include, exclude=args.exclude, rules=rules,
            registries=_names(args.registries), delete_untagged=args.delete_untagged,
            grace_period=args.grace_period, allow_incomplete=True, pushed_within=args.pushed_within,
            pulled_within=args.pulled_within, keep_last_pulled=args.keep_last_pulled, pull_records=args.pull_records)

    return _run_writer("tag-cleanup", args, run, lambda result: {
        "summary": result["summary"], "restart_required": result["restart_required"]})


def _previous_gauge(path, name):
    """A gauge's value in an existing textfile (to carry the last success time over a failure)."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def render_probe_prom(result, error, now, last_success):
    lines = []

    def gauge(name, help_text, value):
        lines.extend(["# HELP %s %s" % (name, help_text), "# TYPE %s gauge" % name, "%s %s" % (name, value)])

    gauge("regwarden_probe_success", "1 if the last probe ran to the end, 0 if it could not run.",
          0 if error else 1)
    gauge("regwarden_probe_last_run_timestamp_seconds", "When the last probe finished.", now)
    if last_success is not None:
        gauge("regwarden_probe_last_success_timestamp_seconds", "When a probe last ran to the end.",
              int(last_success))
    if result is not None:
        gauge("regwarden_probe_findings", "References a client could not fetch in the last probe.",
              len(result["unfetchable"]))
        reachable = result["catalog_reachable"]
        if reachable is not None:
            gauge("regwarden_probe_catalog_reachable", "1 if the catalog answered in the last probe.",
                  1 if reachable else 0)
        gauge("regwarden_probe_duration_seconds", "Duration of the last probe.", result["duration_seconds"])
    return "\n".join(lines) + "\n"


def render_maintenance_prom(states):
    """``states``: {registry: start time or None}, every registry that was ever recorded."""
    lines = ["# HELP regwarden_maintenance_in_progress 1 while maintenance has the registry stopped or read-only.",
             "# TYPE regwarden_maintenance_in_progress gauge"]
    lines += ['regwarden_maintenance_in_progress{registry="%s"} %d' % (_escape_label(name), 0 if started is None else 1)
              for name, started in sorted(states.items())]
    lines += ["# HELP regwarden_maintenance_started_timestamp_seconds When the maintenance in progress began.",
              "# TYPE regwarden_maintenance_started_timestamp_seconds gauge"]
    lines += ['regwarden_maintenance_started_timestamp_seconds{registry="%s"} %d' % (_escape_label(name), started)
              for name, started in sorted(states.items()) if started is not None]
    return "\n".join(lines) + "\n"


def _registry_name(name):
    """A registry name as a state file's name: never a path, a dot file or an overlong name."""
    if not name or "/" in name or name.startswith(".") or len(name) > 255:
        raise CommandError("--registry must be a registry name, not %r" % name)
    return name


def _state_files(directory, suffix, limit):
    """(name without ``suffix``, first ``limit`` bytes) of each regular file of ``directory`` ending in
    ``suffix``, by name; dot files are skipped, and so is anything that is not a regular file (a FIFO
    would block the timer) or cannot be read."""
    found = []
    for entry in sorted(os.listdir(directory)):
        if entry.startswith(".") or not entry.endswith(suffix) or len(entry) == len(suffix):
            continue
        try:
            data = read_small(os.path.join(directory, entry), limit)
        except OSError:
            continue
        found.append((entry[:len(entry) - len(suffix)] if suffix else entry, data))
    return found


def command_maintenance(args):
    """Set one registry's maintenance flag and rewrite the textfile for every registry known."""
    name = _registry_name(args.registry)
    os.makedirs(args.state_dir, mode=0o755, exist_ok=True)
    flag = os.path.join(args.state_dir, name)
    if args.state == "on":
        write_atomically(flag, "%d\n" % int(time.time()))
    else:
        write_atomically(flag, "off\n")
    states = {}
    for entry, data in _state_files(args.state_dir, "", 64):
        text = data.decode("ascii", "replace").strip()
        states[entry] = int(text) if text.isdigit() else None
    write_atomically(args.prom, render_maintenance_prom(states))
    return EXIT_CLEAN


# distribution 2.8's garbage-collect: "<n> blobs marked, <n> blobs and <n> manifests eligible for deletion",
# then one "Deleting blob: <path>" (or "Deleting manifest") line per object it removes.
_GC_SUMMARY = re.compile(r"(\d+) blobs marked, (\d+) blobs and (\d+) manifests eligible for deletion")
_GC_FIELDS = ("finished", "success", "duration_seconds", "blobs_marked", "blobs_deleted", "manifests_deleted",
              "bytes_freed")
_GC_METRICS = (
    ("finished", "regwarden_gc_last_run_timestamp_seconds", "When the registry's last garbage collection ended."),
    ("success", "regwarden_gc_success", "1 if the registry's last garbage collection succeeded."),
    ("duration_seconds", "regwarden_gc_duration_seconds", "Duration of the registry's last garbage collection."),
    ("blobs_marked", "regwarden_gc_blobs_marked", "Blobs the last garbage collection found referenced."),
    ("blobs_deleted", "regwarden_gc_blobs_deleted", "Blobs the last garbage collection deleted."),
    ("manifests_deleted", "regwarden_gc_manifests_deleted", "Manifests the last garbage collection deleted."),
    ("bytes_freed", "regwarden_gc_bytes_freed", "Bytes of blob data the last garbage collection freed "
                                                "(filesystem registries)."),
)


def parse_gc_output(lines):
    """(blobs marked, blobs deleted, manifests deleted) from garbage-collect's output lines; None where
    the output does not say (the summary line is missing: the run died early)."""
    marked = None
    blobs = manifests = 0
    for line in lines:
        if "Deleting blob: " in line:
            blobs += 1
        elif "Deleting manifest" in line:
            manifests += 1
        elif marked is None:
            match = _GC_SUMMARY.search(line)
            if match:
                marked = int(match.group(1))
    return marked, blobs, manifests


def render_gc_prom(states):
    """``states``: {registry: last run record}, every registry collected so far."""
    lines = []
    for field, metric, help_text in _GC_METRICS:
        lines += ["# HELP %s %s" % (metric, help_text), "# TYPE %s gauge" % metric]
        for name, record in sorted(states.items()):
            value = record.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append('%s{registry="%s"} %s' % (metric, _escape_label(name), _number(value)))
    return "\n".join(lines) + "\n"


def _number(value):
    return "%d" % value if float(value).is_integer() else "%.3f" % value


def command_gc_record(args):
    """Record one registry's garbage collection (its output on stdin) and rewrite the textfile of all."""
    name = _registry_name(args.registry)
    if args.duration < 0 or (args.bytes_freed is not None and args.bytes_freed < 0):
        raise CommandError("--duration and --bytes-freed cannot be negative")
    stdin = sys.stdin.buffer if sys.stdin is not None else None
    lines = (line.decode("utf-8", "replace") for line in stdin) if stdin is not None else ()
    marked, blobs, manifests = parse_gc_output(lines)
    record = {"finished": int(time.time()), "success": int(args.success), "duration_seconds": args.duration,
              "blobs_marked": marked, "blobs_deleted": blobs, "manifests_deleted": manifests,
              "bytes_freed": args.bytes_freed}
    os.makedirs(args.state_dir, mode=0o755, exist_ok=True)
    write_atomically(os.path.join(args.state_dir, name + ".json"), json.dumps(record, sort_keys=True) + "\n")
    states = {}
    for entry, data in _state_files(args.state_dir, ".json", 4096):
        try:
            loaded = json.loads(data.decode("utf-8", "replace"))
        except ValueError:
            continue  # a damaged record: that registry's metrics wait for its next run
        if isinstance(loaded, dict):
            states[entry] = {key: loaded.get(key) for key in _GC_FIELDS}
    write_atomically(args.prom, render_gc_prom(states))
    _say(sys.stdout, json.dumps({"registry": name, **record}, sort_keys=True))
    return EXIT_CLEAN


def _run_writer(command, args, run, summary):
    """A command that changes storage: the report, one line of summary, exit 2 if anything was left unread."""
    error = None
    try:
        result = run()
        if result["scan_errors"] or result["incomplete_registries"]:
            error = "could not read or change everything (%d scan errors); see scan_errors in the report" % len(
                result["scan_errors"])
    except (CommandError, *_scan_error_types()) as exc:
        result, error = None, str(exc)
    _write_report(args.report, result if result is not None else {"error": error, "generated_at": _now_text()})
    if error is not None:
        _say(sys.stderr, "regwarden %s: %s" % (command, error))
        return EXIT_ERROR
    _say(sys.stdout, json.dumps(summary(result), sort_keys=True))
    return EXIT_CLEAN


def command_cache_evict(args):
    from ansible_collections.regwarden.registry.plugins.module_utils import _cache_eviction

    name = _registry_name(args.registry)
    return _run_writer("cache-evict", args, lambda: _cache_eviction.evict_cache(
        storage_from_args(args), name, args.max_size, pull_records=args.pull_records,
        grace_period=args.grace_period, allow_incomplete=True),
        lambda result: dict(result["eviction"].get(name, {}), evicted_repositories=len(
            result["eviction"].get(name, {}).get("evicted_repositories", [])),
            removed_tags=len(result["removed_tags"])))


def command_remove_orphans(args):
    from ansible_collections.regwarden.registry.plugins.module_utils import _blob_scan

    return _run_writer("remove-orphans", args, lambda: _blob_scan.scan_blobs(
        storage_from_args(args), registries=_names(args.registries), remove_orphans=True, allow_incomplete=True),
        lambda result: {"summary": result["summary"]})


def command_pull_record(args):
    """Fold each registry's new log lines; one JSON line per registry. Exit 2 if any could not be folded."""
    from ansible_collections.regwarden.registry.plugins.module_utils import _pull_records

    status = EXIT_CLEAN
    for name in _names(args.registries) or []:
        try:
            done = _pull_records.fold(args.log_dir, args.state_dir, name, max_entries=args.max_entries,
                                      rotate_bytes=args.rotate_bytes)
        except _scan_error_types() as exc:
            _say(sys.stderr, "regwarden pull-record: %s" % exc)
            status = EXIT_ERROR
            continue
        except OSError as exc:  # the state directory: not writable, the disk full
            _say(sys.stderr, "regwarden pull-record: registry %s: cannot keep its records in %s: %s"
                 % (name, args.state_dir, exc.strerror or exc))
            status = EXIT_ERROR
            continue
        _say(sys.stdout, json.dumps(done, sort_keys=True))
    return status


def _read_secret(path, what):
    """The first line of a root-only file (a user name, a password), never blocking on a FIFO."""
    try:
        data = read_small(path, 65536)
    except OSError as exc:
        raise CommandError("cannot read the %s file %s: %s" % (what, path, exc.strerror or exc)) from None
    return data.decode("utf-8", "replace").splitlines()[0].strip() if data.strip() else ""


def command_probe(args):
    from ansible_collections.regwarden.registry.plugins.module_utils import _probe, _registry_http

    now = int(time.time())
    last_success = _previous_gauge(args.prom, "regwarden_probe_last_success_timestamp_seconds") if args.prom \
        else None
    result = None
    error = None
    try:
        username = _read_secret(args.username_file, "user name") if args.username_file else args.username
        password = _read_secret(args.password_file, "password") if args.password_file else None
        transport = _registry_http.urllib_transport(validate_certs=not args.insecure, ca_path=args.ca_path,
                                                    timeout=args.timeout)
        result = _probe.probe_registry(
            transport, args.url, username=username, password=password,
            repositories=_names(args.repositories), tags=_names(args.tags),
            verify_blobs=args.verify_blobs, concurrency=args.concurrency or _probe.DEFAULT_CONCURRENCY,
            max_entries=args.max_entries or _probe.DEFAULT_MAX_ENTRIES,
            deadline=args.deadline or _registry_http.DEFAULT_DEADLINE_SECONDS)
        last_success = now
    except CommandError as exc:
        error = str(exc)
    except _registry_http.ProbeError as exc:
        error = str(exc)
    _write_report(args.report, result if result is not None else {"error": error})
    if args.prom:
        write_atomically(args.prom, render_probe_prom(result, error, now, last_success))
    if result is None:
        _say(sys.stderr, "regwarden probe: %s" % error)
        return EXIT_ERROR
    _say(sys.stdout, json.dumps({"findings": len(result["unfetchable"]), "counts": result["counts"]}, sort_keys=True))
    return EXIT_FINDINGS if result["unfetchable"] else EXIT_CLEAN


COMMANDS = {"scan": command_scan, "tag-cleanup": command_tag_cleanup, "probe": command_probe,
            "maintenance": command_maintenance, "gc-record": command_gc_record,
            "pull-record": command_pull_record, "cache-evict": command_cache_evict,
            "remove-orphans": command_remove_orphans}
# What a command that died anyway still leaves behind: its report and, where it writes one, the
# metrics, both saying it failed (the previous success time of the probe carried over).
_FAILURE_PROM = {
    "scan": lambda args, now: render_scan_prom(None, False, now),
    "probe": lambda args, now: render_probe_prom(
        None, "failed", now, _previous_gauge(args.prom, "regwarden_probe_last_success_timestamp_seconds")),
}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.command](args)
    except CommandError as exc:
        _say(sys.stderr, "regwarden %s: %s" % (args.command, exc))
        return EXIT_ERROR
    except Exception as exc:  # the catch-all: never exit 1 ("findings") or a bare traceback on an error
        return _died(args, exc)


def _died(args, exc):
    detail = "%s: %s" % (type(exc).__name__, exc)
    _say(sys.stderr, "regwarden %s: internal error: %s" % (args.command, detail))
    _say(sys.stderr, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    try:
        _write_report(getattr(args, "report", None), {"error": "internal error: " + detail,
                                                      "generated_at": _now_text()})
        if getattr(args, "prom", None) and args.command in _FAILURE_PROM:
            write_atomically(args.prom, _FAILURE_PROM[args.command](args, int(time.time())))
    except Exception as write_exc:  # e.g. the disk is full: still exit 2
        _say(sys.stderr, "regwarden %s: could not record the failure: %s" % (args.command, write_exc))
    return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
