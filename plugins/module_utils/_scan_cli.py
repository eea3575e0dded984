# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scheduled storage scan on the registry VM: the modules' own code, run without Ansible.

    PYTHONPATH=<dir holding ansible_collections> python3 -m \
        ansible_collections.regwarden.registry.plugins.module_utils._scan_cli \
        --path /opt/registry/data --report /var/lib/regwarden/scan.json \
        --prom /var/lib/node_exporter/textfile_collector/regwarden_scan.prom

Exit status: 0 clean, 1 findings present, 2 the scan could not run.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from ansible_collections.regwarden.registry.plugins.module_utils import _blob_scan, _index_audit
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError, find_registries

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2

BLOB_KINDS = ("orphan_layer_links", "invalid_link_files", "zero_byte_blobs", "corrupt_blobs")


def _names(value):
    return [name for name in (part.strip() for part in value.split(",")) if name] if value else None


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="regwarden-scan",
        description="Scan distribution registry storage for damage (blob scan + index audit).",
    )
    parser.add_argument("--path", default="/opt/registry/data", help="directory holding one directory per registry")
    parser.add_argument("--registries", help="comma-separated registries for the blob scan (default: all)")
    parser.add_argument("--index-registries", default="private",
                        help="comma-separated registries for the index audit (default: private; "
                             "registries not present under --path are skipped)")
    parser.add_argument("--verify-digests", action="store_true", help="hash every blob (expensive)")
    parser.add_argument("--report", help="write the JSON report here (atomically)")
    parser.add_argument("--prom", help="write Prometheus textfile metrics here (atomically)")
    return parser.parse_args(argv)


def run_scan(args):
    present = {name for name, _ in find_registries(args.path)}
    blob = _blob_scan.scan_blobs(args.path, registries=_names(args.registries),
                                 verify_digests=args.verify_digests)
    wanted = _names(args.index_registries) or []
    index = _index_audit.audit_indexes(args.path, registries=[name for name in wanted if name in present])
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "path": os.path.abspath(args.path),
        "findings": _blob_scan.count_findings(blob) + _index_audit.count_findings(index),
        "blob_scan": blob,
        "index_audit": index,
    }


def _escape_label(value):
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_prom(report, success, now):
    """Prometheus text exposition: per-registry finding counts by kind, last run time, success."""
    lines = [
        "# HELP regwarden_scan_findings Storage findings of the last scan, by registry and kind.",
        "# TYPE regwarden_scan_findings gauge",
    ]
    if report is not None:
        sections = ((report["blob_scan"], BLOB_KINDS), (report["index_audit"], _index_audit.FINDING_KEYS))
        for section, kinds in sections:
            for registry in sorted(section["summary"]):
                for kind in kinds:
                    lines.append('regwarden_scan_findings{registry="%s",kind="%s"} %d'
                                 % (_escape_label(registry), kind, section["summary"][registry][kind]))
    lines += [
        "# HELP regwarden_scan_last_run_timestamp_seconds When the last scan finished.",
        "# TYPE regwarden_scan_last_run_timestamp_seconds gauge",
        "regwarden_scan_last_run_timestamp_seconds %d" % now,
        "# HELP regwarden_scan_success 1 if the last scan ran to the end, 0 if it could not run.",
        "# TYPE regwarden_scan_success gauge",
        "regwarden_scan_success %d" % (1 if success else 0),
    ]
    return "\n".join(lines) + "\n"


def write_atomically(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".regwarden-", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = None
    error = None
    try:
        report = run_scan(args)
    except ScanError as exc:
        error = str(exc)
    now = int(time.time())
    if args.report:
        payload = report if report is not None else {"error": error}
        write_atomically(args.report, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    if args.prom:
        write_atomically(args.prom, render_prom(report, report is not None, now))
    if report is None:
        print("regwarden-scan: %s" % error, file=sys.stderr)
        return EXIT_ERROR
    summary = {"blob_scan": report["blob_scan"]["summary"], "index_audit": report["index_audit"]["summary"]}
    print(json.dumps({"findings": report["findings"], "summary": summary}, sort_keys=True))
    return EXIT_FINDINGS if report["findings"] else EXIT_CLEAN


if __name__ == "__main__":
    sys.exit(main())
