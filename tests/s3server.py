"""A local S3-compatible server for the object-storage tests.

moto's standalone server in its own process (as s3fs's test-suite runs
it), reached through the environment every digitbatch process reads:
``AWS_*`` credentials and fsspec's ``FSSPEC_S3_ENDPOINT_URL``. Dask worker
processes started after :func:`s3_server` inherit it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(bucket: str = "digitbatch-test") -> Iterator[str]:
    """Run the server, point this process and its children at it; yield the bucket URL."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    import fsspec.config

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_SESSION_TOKEN": "testing",
           "FSSPEC_S3_ENDPOINT_URL": endpoint}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_conf = dict(fsspec.config.conf.get("s3", {}))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        os.environ.update(env)
        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
        yield f"s3://{bucket}"
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        fsspec.config.conf["s3"] = saved_conf
        with contextlib.suppress(Exception):
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
