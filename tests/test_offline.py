"""``tools/offline``: loopback only, and name lookups stay on loopback too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

OFFLINE = Path(__file__).resolve().parents[1] / "tools" / "offline"

PROBE = """
import socket, sys
# the namespace's only interface is loopback (no connection is tried: netcheck would count it)
print("interfaces:", [name for _, name in socket.if_nameindex()])
# a loopback server still works
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.create_connection(srv.getsockname(), timeout=5)
print("loopback: ok")
# a reverse lookup /etc/hosts cannot answer goes to the resolver, now on loopback, and fails fast
try:
    socket.getnameinfo(("::ffff:127.0.0.1", 80, 0, 0), socket.NI_NAMEREQD)
    print("lookup: answered")
except OSError as e:
    print("lookup: failed")
print(open("/etc/resolv.conf").read().strip().replace("\\n", " | "))
"""


def _offline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(OFFLINE), *args], capture_output=True, text=True, timeout=60,
                          env=env or dict(os.environ))


def test_offline_cuts_the_network_and_keeps_lookups_local(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = _offline(sys.executable, "-c", PROBE, env=env)
    assert done.returncode == 0, done.stderr
    if "network cut" not in done.stderr:
        pytest.fail(f"tools/offline could not make a network namespace here: {done.stderr}")
    lines = done.stdout.splitlines()
    assert lines[0] == "interfaces: ['lo']"
    assert lines[1] == "loopback: ok"
    assert lines[2] == "lookup: failed"
    if "--mount" in done.stderr:
        assert lines[3] == "nameserver 127.0.0.1 | options timeout:1 attempts:1"
    assert list(tmp_path.iterdir()) == []  # the resolver file is unlinked once mounted


def test_offline_passes_the_exit_status_and_needs_a_command() -> None:
    assert _offline("bash", "-c", "exit 7").returncode == 7
    usage = _offline()
    assert usage.returncode == 2 and "usage" in usage.stderr
