"""Big files through descriptors: on the daemon's Unix socket the client hands over its own open file
(fs.upload / fs.download with `fd`) and the daemon copies in the kernel. Content, the client's automatic
use of it, several transfers at once, and what it refuses: a descriptor that is not a regular file, one
that is not open, one asked for over a connection that cannot pass descriptors, a target that leaves the
sandbox."""
import hashlib
import os
import threading
import time

import pytest

from sandpit import Client, Sandbox
from sandpit.errors import InvalidParamsError, PermissionDeniedError


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def test_upload_and_download_through_descriptors(daemon, tmp_path):
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    with Sandbox.create(socket=daemon) as sb:
        t = time.perf_counter()
        assert sb.files.upload(str(src), "/home/user/big.bin") == 64 << 20
        up = 64 / (time.perf_counter() - t)
        assert sb.commands.run("sha256sum /home/user/big.bin | cut -c1-64").stdout.strip() == digest(src)
        t = time.perf_counter()
        assert sb.files.download("/home/user/big.bin", str(tmp_path / "back.bin")) == 64 << 20
        down = 64 / (time.perf_counter() - t)
        assert digest(tmp_path / "back.bin") == digest(src)
        assert not (tmp_path / "back.bin.sandpit-part").exists()
        print(f"fd upload {up:.0f} MiB/s, download {down:.0f} MiB/s")
        # The raw method: what came back says it went by descriptor.
        with open(src, "rb") as f, Client(daemon) as c:
            r = c.call("fs.upload", {"sandboxId": sb.id, "path": "raw.bin", "fd": f.fileno()})
        assert r["fd"] is True and r["size"] == 64 << 20
        # Four at once on one connection.
        errors = []

        def one(i):
            try:
                assert sb.files.upload(str(src), f"/home/user/par{i}.bin") == 64 << 20
                sb.files.download(f"/home/user/par{i}.bin", str(tmp_path / f"par{i}.bin"))
            except BaseException as e:  # noqa: BLE001
                errors.append(repr(e))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert errors == []
        assert {digest(tmp_path / f"par{i}.bin") for i in range(4)} == {digest(src)}


def test_what_descriptor_transfers_refuse(daemon, tmp_path):
    with Sandbox.create(socket=daemon) as sb, Client(daemon) as c:
        r, w = os.pipe()
        try:
            for fd in (r, w):
                with pytest.raises(InvalidParamsError) as e:
                    c.call("fs.upload", {"sandboxId": sb.id, "path": "p", "fd": fd})
                assert e.value.data["field"] == "fd" and "regular file" in str(e.value)
        finally:
            os.close(r)
            os.close(w)
        dfd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(InvalidParamsError):
                c.call("fs.upload", {"sandboxId": sb.id, "path": "d", "fd": dfd})
        finally:
            os.close(dfd)
        with pytest.raises(InvalidParamsError) as e:
            c.call("fs.upload", {"sandboxId": sb.id, "path": "x", "fd": 999999})
        assert "not an open descriptor" in str(e.value) or "cannot take" in str(e.value)
        # The target is resolved inside the sandbox like any file call: a symlink out of it stays in.
        sb.commands.run("ln -s /etc/shadow /home/user/evil; ln -s /proc/1/root /home/user/proc-root")
        (tmp_path / "payload").write_bytes(b"owned\n")
        sb.files.upload(str(tmp_path / "payload"), "/home/user/evil")
        assert open("/etc/shadow", "rb").read(6) != b"owned\n"
        with pytest.raises((PermissionDeniedError, InvalidParamsError)):
            sb.files.upload(str(tmp_path / "payload"), "/home/user/proc-root/etc/x")
        # Reading a sandbox file that is a symlink to a host path never reads the host's.
        with pytest.raises(Exception):
            sb.files.download("/home/user/proc-root/etc/hostname", str(tmp_path / "leak"))
        assert not (tmp_path / "leak").exists()
        # A download into a descriptor that is not a regular file is refused, not left hanging.
        r, w = os.pipe()
        try:
            with pytest.raises(InvalidParamsError):
                c.call("fs.download", {"sandboxId": sb.id, "path": "/home/user/evil", "fd": w})
        finally:
            os.close(r)
            os.close(w)


def test_a_connection_that_cannot_pass_descriptors_falls_back_to_chunks(sandpit, tmp_path, monkeypatch):
    """A child daemon on stdio has no peer process to take descriptors from: the call says so, and the
    client's upload/download go by chunks instead, with the same result."""
    monkeypatch.delenv("SANDPIT_SOCKET", raising=False)
    (tmp_path / "f.bin").write_bytes(os.urandom(3 << 20))
    with Client(sandpit=sandpit, serve_args=["--data-dir", str(tmp_path / "data"), "--warm-pool", "0"]) as c:
        sb = Sandbox.create(client=c)
        try:
            with open(tmp_path / "f.bin", "rb") as f, pytest.raises(InvalidParamsError) as e:
                c.call("fs.upload", {"sandboxId": sb.id, "path": "f.bin", "fd": f.fileno()})
            assert e.value.data["field"] == "fd" and "Unix socket" in str(e.value)
            assert sb.files.upload(str(tmp_path / "f.bin"), "f.bin") == 3 << 20
            assert sb.files.download("f.bin", str(tmp_path / "g.bin")) == 3 << 20
            assert (tmp_path / "g.bin").read_bytes() == (tmp_path / "f.bin").read_bytes()
        finally:
            sb.delete()
