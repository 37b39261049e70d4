"""An S3-compatible server on loopback for the cluster tests: moto in server mode, its own process.

:func:`s3_server` starts ``moto_server`` on 127.0.0.1 (a free port) once per session and yields
its endpoint; :func:`s3_bucket` makes a fresh bucket per test. The credentials are moto's dummy
ones, set in the environment of this process (and so of every child it starts: Ray workers, DVC,
``mlflow server``), never real ones.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}
"""moto's dummy credentials; ``AWS_EC2_METADATA_DISABLED`` keeps botocore off 169.254.169.254."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    """``http://127.0.0.1:<port>``."""

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=S3_ENV["AWS_DEFAULT_REGION"])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """``moto_server`` on 127.0.0.1, dummy credentials in ``os.environ`` for the session."""
    port = free_port()
    log = Path(tmp_path_factory.mktemp("moto")) / "moto.log"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in S3_ENV.items():
            mp.setenv(key, value)
        moto = Path(sys.executable).with_name("moto_server")
        with log.open("wb") as out:
            process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                       stderr=subprocess.STDOUT, env=os.environ.copy())
        endpoint = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                    time.sleep(0.2)
            yield S3Server(endpoint)
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the loopback S3 server; returns its name."""
    name = f"flm-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name
