"""S3 settings and the CLI's S3 config file: every bad value is a clear error naming the setting,
never the secret; the real S3 reads and writes are proven in tests/integration/test_s3_scan.py."""

import json
import os

import pytest

from ansible_collections.regwarden.registry.plugins.module_utils import _cli
from ansible_collections.regwarden.registry.plugins.module_utils._s3_view import (
    DEFAULT_WORKERS,
    S3Storage,
    normalize_prefix,
    s3_settings,
)
from ansible_collections.regwarden.registry.plugins.module_utils._storage import ScanError

SECRET = "s3cr3t-value-never-shown"


def settings(**changes):
    base = {"endpoint_url": "http://127.0.0.1:8333", "bucket": "registries", "prefix": "regs",
            "access_key": "key", "secret_key": SECRET}
    base.update(changes)
    return base


def test_defaults_and_normalisation(tmp_path):
    got = s3_settings(settings(prefix="/a/b/", endpoint_url="http://127.0.0.1:8333/", cache_dir=str(tmp_path)))
    assert got["prefix"] == "a/b" and got["endpoint_url"] == "http://127.0.0.1:8333"
    assert got["region"] == "us-east-1" and got["workers"] == DEFAULT_WORKERS
    assert got["validate_certs"] is True and got["verify_links"] is False
    assert s3_settings(got) == got  # validated settings pass again unchanged


@pytest.mark.parametrize("changes, words", [
    ({"bucket": "Bad_Bucket"}, "s3.bucket"),
    ({"bucket": None}, "s3.bucket"),
    ({"bucket": "a..b"}, "s3.bucket"),
    ({"endpoint_url": "ftp://host"}, "s3.endpoint_url"),
    ({"endpoint_url": "http://host/path"}, "s3.endpoint_url"),
    ({"prefix": "a/../b"}, "s3.prefix"),
    ({"prefix": "a//b"}, "s3.prefix"),
    ({"prefix": ".hidden"}, "s3.prefix"),
    ({"prefix": 5}, "s3.prefix"),
    ({"region": "US East"}, "s3.region"),
    ({"secret_key": None}, "go together"),
    ({"access_key": None}, "go together"),
    ({"validate_certs": "yes"}, "s3.validate_certs"),
    ({"verify_links": 1}, "s3.verify_links"),
    ({"ca_bundle": "/no/such/ca.pem"}, "s3.ca_bundle"),
    ({"workers": 0}, "s3.workers"),
    ({"workers": 65}, "s3.workers"),
    ({"workers": True}, "s3.workers"),
    ({"cache_dir": ""}, "s3.cache_dir"),
    ({"colour": "blue"}, "unknown s3 setting"),
])
def test_every_bad_setting_is_named_and_the_secret_is_not(changes, words):
    with pytest.raises(ScanError) as caught:
        s3_settings(settings(**changes))
    assert words in str(caught.value)
    assert SECRET not in str(caught.value)


def test_not_a_dictionary():
    with pytest.raises(ScanError, match="dictionary"):
        s3_settings(["bucket"])


def test_prefix_components():
    assert normalize_prefix(None) == "" and normalize_prefix("/") == ""
    assert normalize_prefix("x/y_z/1.0") == "x/y_z/1.0"


def test_storage_describes_its_prefix_and_locates_registries(tmp_path):
    storage = S3Storage(settings(cache_dir=str(tmp_path)))
    assert storage.describe() == "s3://registries/regs/"
    assert storage.location_of("private") == "regs/private/docker/registry/v2/"
    assert S3Storage(settings(prefix="", cache_dir=str(tmp_path))).location_of("p") == "p/docker/registry/v2/"


def test_names_asked_for_that_cannot_be_registries_are_missing_without_a_request(tmp_path):
    storage = S3Storage(settings(cache_dir=str(tmp_path), endpoint_url="http://127.0.0.1:9"))
    selected, missing = storage.select(["private", "../etc", "UPPER"])
    assert selected == [("private", "regs/private/docker/registry/v2/")]
    assert set(missing) == {"../etc", "UPPER"}
    assert storage.s3.counts["list"] == storage.s3.counts["get"] == 0


# -- the CLI's --s3-config --------------------------------------------------------------------


def write_config(path, data, mode=0o600):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    path.chmod(mode)
    return str(path)


def test_cli_reads_a_private_config(tmp_path):
    path = write_config(tmp_path / "s3.json", settings())
    assert _cli.read_s3_config(path)["bucket"] == "registries"


@pytest.mark.parametrize("make, words", [
    (lambda p: write_config(p, settings(), 0o644), "chmod 600"),
    (lambda p: write_config(p, "{not json " + SECRET), "not a JSON object"),
    (lambda p: write_config(p, "[1, 2]"), "not a JSON object"),
    (lambda p: write_config(p, "x" * 70000), "larger than 64 KiB"),
    (lambda p: str(p), "cannot open"),
    (lambda p: (os.symlink(write_config(p.with_name("real.json"), settings()), p), str(p))[1], "cannot open"),
    (lambda p: (os.mkfifo(p), str(p))[1], "not a regular file"),
    (lambda p: None, "needs --s3-config"),
])
def test_cli_refuses_bad_config_files_naming_the_file_not_the_content(tmp_path, make, words):
    path = make(tmp_path / "s3.json")
    with pytest.raises(_cli.CommandError) as caught:
        _cli.read_s3_config(path)
    assert words in str(caught.value)
    assert SECRET not in str(caught.value)


def test_cli_scan_with_a_bad_config_exits_2_with_failed_metrics(tmp_path, capsys):
    config = write_config(tmp_path / "s3.json", settings(bucket="Bad_Bucket"))
    prom = tmp_path / "scan.prom"
    code = _cli.main(["scan", "--storage", "s3", "--s3-config", config, "--prom", str(prom)])
    assert code == _cli.EXIT_ERROR
    assert "s3.bucket" in capsys.readouterr().err
    assert "regwarden_scan_success 0" in prom.read_text()


# -- the tag link cache ------------------------------------------------------------------------


def test_link_cache_round_trip_and_bad_files_are_an_empty_cache(tmp_path):
    from ansible_collections.regwarden.registry.plugins.module_utils._s3_view import LinkCache

    cache_dir = tmp_path / "links"
    path = cache_dir / "private.json"
    cache = LinkCache(str(path))
    assert cache.load() == {}
    entries = {"r/tags/a/current/link": ("etag1", b"sha256:" + b"a" * 64),
               "r/tags/b/current/link": ("e2", b"\xff\x00x")}
    cache.save(entries)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert cache.load() == entries
    path.write_text("{not json")
    assert cache.load() == {}
    path.write_text(json.dumps({"k": ["only-one"], "k2": "x", "k3": ["e", "sha256:1"]}))
    assert cache.load() == {"k3": ("e", b"sha256:1")}
    path.unlink()
    real = tmp_path / "elsewhere.json"
    real.write_text(json.dumps({"k": ["e", "planted"]}))
    path.symlink_to(real)
    assert cache.load() == {}  # never through a symlink
    path.unlink()
    cache.save(entries)
    cache_dir.chmod(0o777)
    assert cache.load() == {}  # a directory others may write could hold planted links
    cache_dir.chmod(0o700)
