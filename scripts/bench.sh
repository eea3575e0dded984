#!/usr/bin/env bash
# Storage scanner benchmark (not a test): generates seeded registry trees under .cache/bench/
# (reused between runs) and prints wall time and peak memory of the two modules' scans against
# `find PATH -name link -type f | wc -l` and a naive os.walk scanner, plus the 1M-link targets
# and a check of the modules' findings against the injected damage. Needs no docker.
#
#   scripts/bench.sh                 100k and 1M link files (the 1M tree needs ~15 GB, ~4M inodes)
#   scripts/bench.sh --size 100k     one size (repeatable: --size 100k --size 1m)
#   scripts/bench.sh --reps 5 --profile --json results.json
#   scripts/bench.sh s3 [--reps 3]   the S3 scan on a local SeaweedFS bucket holding the 100k tree,
#                                    beside `garbage-collect --dry-run` (tests/bench/run_s3_bench.py)
# Exit status 1 when the findings disagree with the generator or a 1M target is missed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# GNU time measures each candidate's peak memory.
[ -x /usr/bin/time ] || { require_root; install_apt_packages; }
ensure_venv
if [ "${1:-}" = s3 ]; then
    shift
    [ -x /usr/bin/docker-registry ] || { require_root; install_apt_packages; }
    exec "$VENV/bin/python" "$REPO_ROOT/tests/bench/run_s3_bench.py" "$@"
fi
exec "$VENV/bin/python" "$REPO_ROOT/tests/bench/run_bench.py" "$@"
