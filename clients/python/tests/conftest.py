"""Starts a real Sandpit daemon (the repo's build) on a scratch socket and data dir for the tests."""
import os
import shutil
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def sandpit_bin() -> str:
    exe = os.environ.get("SANDPIT_BIN") or os.path.join(ROOT, ".build", "debug", "sandpit")
    if not os.path.exists(exe):
        pytest.exit(f"no sandpit binary at {exe}: build it first (swift build) or set SANDPIT_BIN", 2)
    return exe


@pytest.fixture(scope="session")
def sandpit() -> str:
    return sandpit_bin()


@pytest.fixture(scope="session")
def daemon(sandpit):
    """A daemon on a Unix socket: yields the socket path; checks at the end that nothing leaked."""
    scratch = tempfile.mkdtemp(prefix="sandpit-pytest-", dir="/tmp")
    os.chmod(scratch, 0o755)
    sock = os.path.join(scratch, "s.sock")
    log = open(os.path.join(scratch, "daemon.log"), "w")
    proc = subprocess.Popen([sandpit, "serve", "--socket", sock, "--data-dir", os.path.join(scratch, "data"),
                             "--storage-gib", "8", "--warm-pool", "1"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    for _ in range(600):
        if os.path.exists(sock) or proc.poll() is not None:
            break
        time.sleep(0.05)
    if not os.path.exists(sock):
        pytest.exit("the daemon did not start:\n" + open(os.path.join(scratch, "daemon.log")).read(), 2)
    os.environ["SANDPIT_SOCKET"] = sock
    yield sock
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    os.environ.pop("SANDPIT_SOCKET", None)
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture()
def client(daemon):
    from sandpit import Client
    c = Client(daemon)
    yield c
    c.close()


def live_sandboxes(client) -> int:
    return client.info()["sandboxes"]
