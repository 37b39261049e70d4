"""Fetch one wheel's ``METADATA`` from PyPI without downloading the wheel.

A wheel is a zip file: its central directory sits at the end, so three HTTP range requests (the
tail, the directory, the member) read ``*.dist-info/METADATA`` out of a 500 MB torch wheel. The
Docker image's test compares the image's CUDA base with the CUDA requirements written there
(``cuda-toolkit==13.0.3``, ``nvidia-*-cu13`` for torch 2.13.0); this script refreshes the cached
copy (headers only, without the long description) when the torch pin changes:

    python tools/wheel_metadata.py torch 2.13.0 cp311-cp311-manylinux_2_28_x86_64 \
        > infra/docker/torch-wheel-METADATA

Standard library only; needs the network (PyPI).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import urllib.request
import zipfile
import zlib

SIMPLE = "https://pypi.org/simple/{name}/"
_EOCD = b"PK\x05\x06"


def _get(url: str, start: int | None = None, end: int | None = None) -> bytes:
    headers = {"Accept": "application/vnd.pypi.simple.v1+json"}
    if start is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
        return response.read()


def wheel_url(name: str, version: str, tag: str) -> tuple[str, int]:
    """URL and size of ``{name}-{version}-{tag}.whl`` from PyPI's JSON simple index."""
    index = json.loads(_get(SIMPLE.format(name=name)))
    filename = f"{name}-{version}-{tag}.whl"
    for entry in index["files"]:
        if entry["filename"] == filename:
            return entry["url"], int(entry["size"])
    raise SystemExit(f"{filename} is not on PyPI")


def read_metadata(url: str, size: int) -> str:
    """The wheel's ``*.dist-info/METADATA`` text, read by range requests."""
    tail = _get(url, max(0, size - 65_536))
    at = tail.rfind(_EOCD)
    if at < 0:
        raise SystemExit("no zip end-of-central-directory record (zip64 wheels are not handled)")
    cd_size, cd_offset = struct.unpack("<II", tail[at + 12 : at + 20])
    directory = _get(url, cd_offset, cd_offset + cd_size - 1)
    # A zip holding only the central directory: zipfile lists the members with their offsets.
    eocd = tail[at : at + 12] + struct.pack("<II", cd_size, 0) + tail[at + 20 :]
    listing = zipfile.ZipFile(io.BytesIO(directory + eocd))
    member = next(i for i in listing.infolist() if i.filename.endswith(".dist-info/METADATA"))
    local = _get(url, member.header_offset, member.header_offset + 30 + 65_535 + member.compress_size)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = 30 + name_len + extra_len
    raw = local[start : start + member.compress_size]
    if member.compress_type == zipfile.ZIP_DEFLATED:
        raw = zlib.decompress(raw, -15)
    return raw.decode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("tag", help="the wheel's tags, e.g. cp311-cp311-manylinux_2_28_x86_64")
    args = parser.parse_args(argv)
    url, size = wheel_url(args.name, args.version, args.tag)
    sys.stdout.write(f"# {args.name}-{args.version}-{args.tag}.whl from {url}\n")
    headers = read_metadata(url, size).split("\n\n", 1)[0]  # the long description is not needed
    sys.stdout.write(headers + "\n")


if __name__ == "__main__":
    main()
