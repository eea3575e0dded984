# Copyright: regwarden.registry contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The options of every module that reads registry storage (see module_utils/_module_result.py).
    DOCUMENTATION = r"""
options:
  path:
    description:
      - Directory holding one directory per registry, each with C(docker/registry/v2) inside
        (C(<path>/<name>/docker/registry/v2)), the layout the role creates.
      - If O(path) itself contains C(docker/registry/v2), it is one registry named after the directory.
      - A registry directory that holds nothing yet (no C(docker) directory) is an empty registry
        when asked for by name.
    type: path
    default: /opt/registry/data
  storage:
    description:
      - Where the registries keep their data. V(filesystem) reads O(path); V(s3) reads the bucket
        of O(s3) (distribution's C(s3) storage driver), with the same findings and the same result,
        paths given as C(s3://bucket/key).
      - On S3 every key comes from a paged listing; only tag links, link files of the wrong size,
        manifests (kept in a local cache by digest) and, with O(s3.verify_links), every link file are
        read. Changes are object deletes and puts with the same re-checks as on a filesystem.
    type: str
    choices: [filesystem, s3]
    default: filesystem
  s3:
    description:
      - The bucket, with O(storage=s3). Registries are found under O(s3.prefix) as under O(path),
        C(<prefix>/<name>/docker/registry/v2/...), so a registry's C(rootdirectory) is C(<prefix>/<name>).
      - Needs the Python library boto3 where the module runs (Debian C(python3-boto3)).
    type: dict
    suboptions:
      endpoint_url:
        description: URL of an S3-compatible server, C(https://host:port); AWS when not set.
        type: str
      bucket:
        description: The bucket.
        type: str
        required: true
      prefix:
        description: Key prefix holding one directory per registry (the parent of their root directories).
        type: str
        default: ""
      region:
        description: The bucket's region (default C(us-east-1)).
        type: str
      access_key:
        description: Access key; with O(s3.secret_key). Without both, boto3's own credential chain.
        type: str
      secret_key:
        description: Secret key; never logged.
        type: str
      ca_bundle:
        description: CA bundle that signs the endpoint's certificate.
        type: path
      validate_certs:
        description: Validate the endpoint's TLS certificate.
        type: bool
        default: true
      verify_links:
        description:
          - GET every link file to check that it names its own digest. Without it a link file of the
            right size (71 bytes) is taken as valid, so one naming another digest goes unseen.
        type: bool
        default: false
      cache_dir:
        description:
          - Directory of the manifest cache and of the registries' lock files (mode 0700).
          - Default C(/var/cache/regwarden) for root (shared with the VM's timers), else C(~/.cache/regwarden).
        type: path
      workers:
        description: Requests in flight at once per registry (1-64, default 16).
        type: int
  allow_incomplete:
    description:
      - By default the task fails when a registry asked for is missing, or when a top-level
        directory of a registry (C(repositories), C(blobs)) cannot be read, or when O(path) holds
        no registry at all (an unmounted volume). A scan that read nothing must not pass as clean.
      - V(true) reports those registries in RV(incomplete_registries) and RV(scan_errors) instead,
        with the results of every registry that could be read.
    type: bool
    default: false
  max_findings:
    description:
      - Entries kept in each list of the result (findings, removals, scan errors), the first in
        sort order. The true count of every list is in RV(totals), the lists cut short in
        RV(truncated).
    type: int
    default: 10000
notes:
  - Symlinks are never followed and nothing outside O(path) (or O(s3.prefix)) is changed. Places that cannot be read
    (permission denied, a symlink, a FIFO) are not judged. They are listed in RV(scan_errors),
    never reported as damage and never changed.
"""

    FINDINGS = r"""
options:
  fail_on_findings:
    description:
      - Fail the task when any finding is reported or any place could not be read
        (RV(scan_errors)). The findings stay in the result.
    type: bool
    default: false
"""
