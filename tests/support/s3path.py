"""A small pathlib-like view of keys in a bucket, so the storage helpers, the damage functions
and the HTTP truth work on a registry in S3 as on one on disk.

``S3Path(client, bucket, "regs/private/docker/registry/v2") / "blobs"`` names a key prefix;
"directories" exist when some key lies below them, files are objects. Only what the test
helpers use is here.
"""

from __future__ import annotations


class S3Path:
    def __init__(self, client, bucket: str, key: str) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key.strip("/")

    def __truediv__(self, part: str) -> S3Path:
        return S3Path(self.client, self.bucket, f"{self.key}/{part}" if self.key else str(part))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def __fspath__(self) -> str:  # os.path.join(str) in messages; never opened as a file
        return str(self)

    def __repr__(self) -> str:
        return f"S3Path({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, S3Path) and (self.bucket, self.key) == (other.bucket, other.key)

    def __hash__(self) -> int:
        return hash((self.bucket, self.key))

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> S3Path:
        return S3Path(self.client, self.bucket, self.key.rsplit("/", 1)[0] if "/" in self.key else "")

    # -- reading ---------------------------------------------------------------------------

    def head(self) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # botocore ClientError 404
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def is_file(self) -> bool:
        return self.head() is not None

    def size(self) -> int | None:
        info = self.head()
        return None if info is None else int(info["ContentLength"])

    def objects(self) -> list[tuple[str, int]]:
        """(key relative to this prefix, size) of every object below it."""
        found = []
        prefix = self.key + "/" if self.key else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents") or ():
                found.append((item["Key"][len(prefix):], item["Size"]))
        return found

    def is_dir(self) -> bool:
        prefix = self.key + "/"
        return bool(self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1).get("Contents"))

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def children(self) -> list[tuple[str, bool]]:
        """(name, is_dir) of the entries right below this prefix, sorted."""
        entries: dict[str, bool] = {}
        for rel, _size in self.objects():
            first, sep, _rest = rel.partition("/")
            entries[first] = entries.get(first, False) or bool(sep)
        return sorted(entries.items())

    def read_bytes(self) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()

    def read_text(self, errors: str = "strict") -> str:
        return self.read_bytes().decode("utf-8", errors)

    # -- changing (the damage functions) ---------------------------------------------------

    def write_bytes(self, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data)
        if not data:
            # SeaweedFS 4.48 leaves a kept-alive connection stuck after an empty PUT: the next
            # non-empty PUT on it waits out the 60 s read timeout. Start the pool afresh.
            self.client._endpoint.http_session.close()

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def unlink(self) -> None:
        if not self.is_file():
            raise FileNotFoundError(str(self))
        self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def rmtree(self) -> None:
        keys = [rel for rel, _size in self.objects()]
        if not keys:
            raise FileNotFoundError(str(self))
        for rel in keys:
            self.client.delete_object(Bucket=self.bucket, Key=f"{self.key}/{rel}")
        # As rm -r removes the directories too: SeaweedFS keeps empty directories, and a delimiter
        # listing (the registry's tag list) would still show them.
        directories = {"/".join(rel.split("/")[:depth]) for rel in keys for depth in range(1, rel.count("/") + 1)}
        for rel in sorted(directories, key=lambda d: -d.count("/")):
            self.client.delete_object(Bucket=self.bucket, Key=f"{self.key}/{rel}/")
        self.client.delete_object(Bucket=self.bucket, Key=f"{self.key}/")

    def mkdir(self) -> None:
        """A "directory" is a key below: an object ``<key>/keep`` (what an S3 tool leaves there)."""
        (self / "keep").write_bytes(b"")
