"""Pull records folded from nginx's per-registry manifest log: incremental, rotation-safe, bounded,
and honest about when they are complete."""

import json
import os

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _pull_records
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError

DIGEST = "sha256:" + "ab" * 32


def line(uri, when, method="GET", status="200"):
    return json.dumps({"t": "%.3f" % when, "m": method, "s": status, "u": uri}) + "\n"


@pytest.fixture
def dirs(tmp_path):
    (tmp_path / "logs").mkdir()
    return tmp_path / "logs", tmp_path / "state"


def append(logs, text, name="private"):
    with open(logs / (name + ".log"), "a") as handle:
        handle.write(text)


def fold(dirs, now=2000.0, **kwargs):
    logs, state = dirs
    return _pull_records.fold(str(logs), str(state), "private", now=now, **kwargs)


def load(dirs):
    return _pull_records.load(str(dirs[1]), "private")


@pytest.mark.parametrize("text, expected", [
    (line("/v2/team/app/manifests/v1", 100), ("team/app", "v1", 100.0)),
    (line("/v2/app/manifests/" + DIGEST, 5, method="HEAD"), ("app", DIGEST, 5.0)),
    (line("/v2/team/app/manifests/v1", 100, status="404"), None),
    (line("/v2/team/app/manifests/v1", 100, method="PUT"), None),
    (line("/v2/team/app/blobs/" + DIGEST, 100), None),
    (line("/v2/Team/app/manifests/v1", 100), None),  # not a repository name the registry accepts
    (line("/v2/../etc/manifests/v1", 100), None),
    (line("/v2/team/app/manifests/sha256:abc", 100), None),
    (line("/v2/team/app/manifests/v1", float("nan")), None),
    ('{"t": 5, "m": "GET", "s": "200", "u": "/v2/a/manifests/v1"}', None),  # nginx writes strings
    ("not json at all", None),
    ("[1, 2]", None),
])
def test_only_a_200_to_a_manifest_get_or_head_is_a_pull(text, expected):
    assert _pull_records.parse_line(text) == expected


def test_folds_are_incremental_and_keep_the_latest_time_per_tag_and_digest(dirs):
    logs, _state = dirs
    append(logs, line("/v2/team/app/manifests/v1", 100) + line("/v2/team/app/manifests/" + DIGEST, 110))
    first = fold(dirs, now=1000.0)
    assert (first["pulls"], first["skipped"], first["complete_since"]) == (2, 0, 1000.0)
    append(logs, line("/v2/team/app/manifests/v1", 90) + line("/v2/team/app/manifests/v1", 300)
           + "garbage\n" + line("/v2/other/manifests/v2", 200)[:-10])  # the last line is half-written
    second = fold(dirs)
    assert (second["lines"], second["pulls"], second["skipped"]) == (3, 2, 1)
    records = load(dirs)
    assert records.tag_pulled("team/app", "v1") == 300.0
    assert records.digest_pulled("team/app", "ab" * 32) == 110.0
    assert records.tag_pulled("other", "v2") is None
    assert records.complete_since == 1000.0
    # The rest of the half-written line arrives: it is read whole, once.
    append(logs, line("/v2/other/manifests/v2", 200)[-10:])
    assert fold(dirs)["pulls"] == 1
    assert load(dirs).tag_pulled("other", "v2") == 200.0
    assert fold(dirs)["lines"] == 0
    assert load(dirs).repository_pulled("team/app") == 300.0


def test_rotation_reads_the_rest_of_the_old_file_then_the_new_one(dirs):
    logs, _state = dirs
    append(logs, line("/v2/a/manifests/v1", 100) * 3)
    assert fold(dirs, rotate_bytes=64)["rotated"] is True
    assert not (logs / "private.log").exists()
    # nginx has not reopened yet: it still writes to the renamed file.
    with open(logs / "private.log.1", "a") as handle:
        handle.write(line("/v2/a/manifests/v2", 150))
    assert fold(dirs, rotate_bytes=64)["pulls"] == 1
    with open(logs / "private.log.1", "a") as handle:
        handle.write(line("/v2/a/manifests/v3", 160))
    # Reopened: a new file; the old one's last line is read before it.
    append(logs, line("/v2/a/manifests/v4", 170))
    result = fold(dirs, rotate_bytes=10 ** 6)
    assert (result["pulls"], result["rotated"]) == (2, False)
    records = load(dirs)
    assert [records.tag_pulled("a", tag) for tag in ("v1", "v2", "v3", "v4")] == [100.0, 150.0, 160.0, 170.0]
    assert records.complete_since == 2000.0  # the first fold's time: nothing was lost


def test_a_log_lost_unread_or_truncated_moves_complete_since(dirs):
    logs, _state = dirs
    append(logs, line("/v2/a/manifests/v1", 100))
    fold(dirs, now=1000.0)
    append(logs, line("/v2/a/manifests/v2", 1100))
    os.unlink(logs / "private.log")  # rotated away by someone else before it was read
    append(logs, line("/v2/a/manifests/v3", 1200))
    fold(dirs, now=1300.0)
    records = load(dirs)
    assert records.complete_since == 1300.0  # v2's pull was lost: absence before now proves nothing
    assert records.tag_pulled("a", "v3") == 1200.0 and records.tag_pulled("a", "v1") == 100.0


def test_truncation_below_the_offset_is_a_gap(dirs):
    logs, _state = dirs
    append(logs, line("/v2/a/manifests/v1", 100) * 5)
    fold(dirs, now=1000.0)
    os.truncate(logs / "private.log", 0)
    append(logs, line("/v2/a/manifests/v2", 1400))
    fold(dirs, now=1500.0)
    records = load(dirs)
    assert records.complete_since == 1500.0 and records.tag_pulled("a", "v2") == 1400.0


def test_records_are_bounded_and_complete_only_after_the_newest_dropped(dirs):
    logs, _state = dirs
    append(logs, "".join(line("/v2/a/manifests/t%d" % n, 100 + n) for n in range(10)))
    result = fold(dirs, now=50.0, max_entries=4)
    assert (result["dropped"], result["entries"]) == (6, 4)
    records = load(dirs)
    assert sorted(records.tags["a"]) == ["t6", "t7", "t8", "t9"]
    assert records.complete_since == 105.0


def test_overlong_lines_are_skipped_and_the_next_line_still_counts(dirs):
    logs, _state = dirs
    append(logs, "x" * (3 << 20) + "\n" + line("/v2/a/manifests/v1", 100))
    result = fold(dirs)
    assert (result["pulls"], result["skipped"]) == (1, 1)


def test_a_fifo_or_symlink_as_the_log_is_a_clear_error_not_a_hang(dirs, tmp_path):
    logs, _state = dirs
    os.mkfifo(logs / "private.log")
    with pytest.raises(ScanError, match=r"cannot read the pull log of registry private .*private\.log"):
        fold(dirs)
    os.unlink(logs / "private.log")
    (tmp_path / "elsewhere").write_text(line("/v2/a/manifests/v1", 100))
    os.symlink(tmp_path / "elsewhere", logs / "private.log")
    with pytest.raises(ScanError, match="cannot read the pull log"):
        fold(dirs)


def test_missing_or_damaged_records_are_errors_naming_the_file(dirs):
    _logs, state = dirs
    with pytest.raises(ScanError, match=r"no pull records for registry private: .*private\.json does not exist"):
        load(dirs)
    state.mkdir()
    (state / "private.json").write_text("{not json")
    with pytest.raises(ScanError, match=r"pull records .*private\.json are damaged"):
        load(dirs)
    with pytest.raises(ScanError, match="damaged"):
        fold(dirs)  # never replaced by empty records
    with pytest.raises(ScanError, match="not a registry name"):
        _pull_records.load(str(state), "../etc")


def test_lines_nginx_writes_to_the_renamed_log_are_read_until_it_is_gone(dirs):
    """A reopen that fails (or comes late) leaves nginx writing to <registry>.log.1: folds read on there."""
    logs, _state = dirs
    append(logs, line("/v2/a/manifests/v1", 100) * 3)
    fold(dirs, rotate_bytes=64)
    append(logs, "")  # nginx reopened: a new, empty live log
    for tag, when in (("v2", 150), ("v3", 160)):
        with open(logs / "private.log.1", "a") as handle:
            handle.write(line("/v2/a/manifests/" + tag, when))
        append(logs, line("/v2/b/manifests/" + tag, when))
        assert fold(dirs, rotate_bytes=10 ** 6)["pulls"] == 2
    records = load(dirs)
    assert records.tag_pulled("a", "v3") == 160.0 and records.tag_pulled("b", "v3") == 160.0
    assert records.complete_since == 2000.0


def test_a_log_truncated_in_place_is_a_gap(dirs):
    logs, _state = dirs
    append(logs, line("/v2/a/manifests/v1", 100) * 8)
    fold(dirs, now=1000.0)
    os.truncate(logs / "private.log", 300)  # the first bytes stay, the offset read is past the end
    append(logs, "\n" + line("/v2/a/manifests/v2", 1400))
    fold(dirs, now=1500.0)
    records = load(dirs)
    assert records.complete_since == 1500.0 and records.tag_pulled("a", "v2") == 1400.0


def test_capacity_figures_get_each_repositorys_last_pull(dirs):
    logs, state = dirs
    append(logs, line("/v2/team/app/manifests/v1", 100) + line("/v2/team/app/manifests/" + DIGEST, 300))
    fold(dirs, now=50.0)
    capacity = {"private": {"repositories": {"team/app": {}, "team/idle": {}}},
                "hub": {"repositories": {"library/x": {}}}}
    _pull_records.annotate_capacity(capacity, str(state))
    assert capacity["private"]["pull_records_complete_since"] == 50.0
    assert capacity["private"]["repositories"]["team/app"]["last_pulled"] == 300.0
    assert capacity["private"]["repositories"]["team/idle"]["last_pulled"] is None
    # No records for that registry: nothing known, not an error.
    assert capacity["hub"]["pull_records_complete_since"] is None
    assert capacity["hub"]["repositories"]["library/x"]["last_pulled"] is None
    (state / "hub.json").write_text("[]")
    with pytest.raises(ScanError, match=r"pull records .*hub\.json are damaged"):
        _pull_records.annotate_capacity(capacity, str(state))


def test_a_line_nested_past_pythons_limit_is_skipped_not_a_crash(dirs):
    """8 KiB of '[' is within the line bound; json.loads raises RecursionError on it, which once
    stopped every fold at that line for good."""
    logs, _state = dirs
    append(logs, "[" * 8000 + "\n" + line("/v2/a/manifests/v1", 100))
    result = fold(dirs)
    assert (result["pulls"], result["skipped"]) == (1, 1)


def test_a_state_directory_that_cannot_be_written_is_a_clear_error(dirs, capsys):
    from ansible_collections.regwarden.registry.plugins.module_utils import _cli

    logs, state = dirs
    append(logs, line("/v2/a/manifests/v1", 100))
    state.write_text("a file, not a directory")
    code = _cli.main(["pull-record", "--registries", "private", "--log-dir", str(logs), "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == _cli.EXIT_ERROR
    assert "registry private: cannot keep its records in %s" % state in err and "Traceback" not in err
