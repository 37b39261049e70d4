"""The loopback S3 server the cluster tests use really stores objects (and only on 127.0.0.1)."""

from __future__ import annotations

from tests.cluster.conftest import S3Server


def test_objects_round_trip(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read() == b"hello"
    assert s3_server.endpoint.startswith("http://127.0.0.1:")
    keys = [obj["Key"] for obj in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["a/b.txt"]
