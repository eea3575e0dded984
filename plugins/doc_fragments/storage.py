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
  - Symlinks are never followed and nothing outside O(path) is changed. Places that cannot be read
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
