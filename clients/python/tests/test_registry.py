"""Templates FROM an image in a registry (issue 26): a real registry (Debian's docker-registry) on loopback,
images pushed to it with skopeo from OCI layouts this test makes, and a daemon told the registry is insecure
(plain HTTP). Nothing is fetched from the internet."""
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time

import pytest

from conftest import ROOT, sandpit_bin

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("docker-registry", "skopeo", "htpasswd", "openssl")),
                                reason="docker-registry, skopeo and htpasswd are installed by scripts/test-python")


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def tar_gz(files: dict) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


class Layout:
    """An OCI image layout with images made of gzip'd tar layers."""

    def __init__(self, path):
        self.path = path
        os.makedirs(f"{path}/blobs/sha256", exist_ok=True)
        with open(f"{path}/oci-layout", "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self.index = {"schemaVersion": 2, "manifests": []}

    def blob(self, data: bytes) -> str:
        d = sha(data)
        with open(f"{self.path}/blobs/sha256/{d[7:]}", "wb") as f:
            f.write(data)
        return d

    def image(self, tag: str, layers: list, env=("PATH=/bin:/usr/bin",)) -> str:
        diff_ids = [sha(gzip.decompress(l)) for l in layers]
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": list(env), "WorkingDir": "/home/user"},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.blob(config), "size": len(config)},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": self.blob(l), "size": len(l)}
                                          for l in layers]}).encode()
        digest = self.blob(manifest)
        self.index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": len(manifest),
                                        "annotations": {"org.opencontainers.image.ref.name": tag}})
        with open(f"{self.path}/index.json", "w") as f:
            json.dump(self.index, f)
        return digest


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve_registry(config, port):
    """Starts docker-registry with this config; returns once it listens on the port."""
    p = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not start on port {port}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registry with: mini:1 (a rootfs layer + a layer of its own), mini:2 (the same rootfs layer + another),
    broken:1 (whose second layer is corrupted in the registry's storage); and a daemon that may pull from it."""
    tmp = tmp_path_factory.mktemp("registry")
    port = free_port()
    storage = tmp / "storage"
    (tmp / "config.yml").write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
                                    f"http:\n  addr: 127.0.0.1:{port}\n")
    registry = serve_registry(tmp / "config.yml", port)
    rootfs = tmp / "rootfs.tar.gz"
    subprocess.run(["sh", f"{ROOT}/Fixtures/templates/rootfs/make-rootfs.sh", str(rootfs)], check=True)
    base = rootfs.read_bytes()
    layout = Layout(str(tmp / "layout"))
    images = {
        "mini:1": layout.image("1", [base, tar_gz({"etc/motd": b"from the registry\n"})], env=("PATH=/bin", "GREETING=hej")),
        "mini:2": layout.image("2", [base, tar_gz({"etc/motd": b"the second image\n"})]),
        "broken:1": layout.image("b1", [base, tar_gz({"etc/motd": b"never seen\n"})]),
        # A large layer (incompressible): many progress events, a transfer of many chunks.
        "big:1": layout.image("big", [base, tar_gz({"opt/bulk.bin": os.urandom(24 << 20), "etc/motd": b"big\n"})]),
    }
    for name, tag in (("mini:1", "1"), ("mini:2", "2"), ("broken:1", "b1"), ("big:1", "big")):
        subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout.path}:{tag}",
                        f"docker://127.0.0.1:{port}/{name}"], check=True)
    # Flip a byte of broken:1's own layer where the registry keeps it.
    broken = json.loads(open(f"{layout.path}/blobs/sha256/{images['broken:1'][7:]}").read())["layers"][1]["digest"][7:]
    data = storage / "docker/registry/v2/blobs/sha256" / broken[:2] / broken / "data"
    b = bytearray(data.read_bytes())
    b[len(b) // 2] ^= 0xFF
    data.write_bytes(bytes(b))

    # The same images behind TLS (a self-signed certificate) and basic auth (htpasswd).
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem"),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    (tmp / "htpasswd").write_text(subprocess.run(["htpasswd", "-Bbn", "agent", "s3cret"], check=True, capture_output=True, text=True).stdout)
    private = free_port()
    (tmp / "private.yml").write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp / 'private'}\n"
                                     f"http:\n  addr: 127.0.0.1:{private}\n  tls:\n    certificate: {tmp / 'cert.pem'}\n    key: {tmp / 'key.pem'}\n"
                                     f"auth:\n  htpasswd:\n    realm: sandpit-test\n    path: {tmp / 'htpasswd'}\n")
    secured = serve_registry(tmp / "private.yml", private)
    subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false", "--dest-creds", "agent:s3cret",
                    f"oci:{layout.path}:1", f"docker://127.0.0.1:{private}/team/mini:1"], check=True)

    daemons = []
    from sandpit import Client

    def start(*args, env=None):
        scratch = tempfile.mkdtemp(prefix="sandpit-registry-", dir="/tmp")
        sock = os.path.join(scratch, "s.sock")
        log = open(os.path.join(scratch, "daemon.log"), "w")
        p = subprocess.Popen([sandpit_bin(), "serve", "--socket", sock, "--data-dir", os.path.join(scratch, "data"), "--storage-gib", "4",
                              "--warm-pool", "0", *args], stdout=log, stderr=log, env={**os.environ, **(env or {})})
        for _ in range(600):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        c = Client(sock)
        daemons.append((p, c, scratch))
        return c, scratch, sock

    c, scratch, sock = start("--insecure-registry", f"127.0.0.1:{port}")
    yield {"client": c, "registry": f"127.0.0.1:{port}", "images": images, "storage": storage, "base": sha(base),
           "scratch": scratch, "sock": sock, "private": f"127.0.0.1:{private}", "ca": str(tmp / "cert.pem"), "start": start, "tmp": tmp}
    for p, c, scratch in daemons:
        c.close()
        p.terminate()
        p.wait(60)
        shutil.rmtree(scratch, ignore_errors=True)
    for r in (registry, secured):
        r.terminate()
        r.wait(30)


def build(c, name, spec, events=None):
    def note(method, p):
        if events is not None:
            events.append(p)
    return c.call("template.build", {"name": name, "spec": spec}, timeout=300, on_notification=note)


def run(c, template, cmd):
    sid = c.call("sandbox.create", {"template": template})["sandboxId"]
    try:
        out = []
        r = c.call("exec.run", {"sandboxId": sid, "cmd": cmd}, on_notification=lambda method, p: out.append(p.get("data", "")))
        return r, "".join(out)
    finally:
        c.call("sandbox.delete", {"sandboxId": sid})


def test_a_template_from_a_registry_image_by_tag_then_run_steps(world):
    c, reg = world["client"], world["registry"]
    events = []
    build(c, "pulled", f"FROM {reg}/mini:1\nRUN echo built > /home/user/built\n", events)
    pulls = [e for e in events if "layer" in e]
    assert {e["layer"] for e in pulls} == {l for l in world_layers(world, "mini:1")}, pulls
    for layer in {e["layer"] for e in pulls}:
        mine = [e for e in pulls if e["layer"] == layer]
        assert mine[0]["bytesDone"] == 0 and mine[-1]["bytesDone"] == mine[-1]["bytesTotal"] > 0, mine
    r, out = run(c, "pulled", ["/bin/sh", "-c", "cat /etc/motd /home/user/built; echo $GREETING; id -u; ls /usr 2>&1 || true"])
    assert r["exitCode"] == 0, out
    assert out.startswith("from the registry\nbuilt\nhej\n1000\n"), out
    assert "No such file" in out, "the image's root, not the host's /usr"


def test_a_pinned_digest_is_pulled_and_checked(world):
    c, reg, digest = world["client"], world["registry"], world["images"]["mini:2"]
    build(c, "pinned", f"FROM {reg}/mini@{digest}\n")
    assert run(c, "pinned", ["/bin/cat", "/etc/motd"])[1] == "the second image\n"
    wrong = "sha256:" + "0" * 64
    from sandpit import SandpitError
    with pytest.raises(SandpitError) as e:
        build(c, "wrong", f"FROM {reg}/mini@{wrong}\n")
    assert e.value.code == "not_found", e.value


def test_a_layer_the_store_has_is_not_downloaded_again(world):
    """mini:2 shares mini:1's base layer: with that blob gone from the registry, mini:2 still builds."""
    c, reg, base = world["client"], world["registry"], world["base"]
    build(c, "first", f"FROM {reg}/mini:1\n")
    gone = world["storage"] / "docker/registry/v2/blobs/sha256" / base[7:9] / base[7:] / "data"
    saved = gone.read_bytes()
    gone.unlink()
    try:
        build(c, "second", f"FROM {reg}/mini:2\n")
        assert run(c, "second", ["/bin/cat", "/etc/motd"])[1] == "the second image\n"
    finally:
        gone.write_bytes(saved)


def test_a_corrupted_layer_is_refused_and_nothing_is_kept(world):
    from sandpit import SandpitError
    c, reg = world["client"], world["registry"]
    with pytest.raises(SandpitError) as e:
        build(c, "broken", f"FROM {reg}/broken:1\n")
    assert e.value.code == "digest_mismatch", e.value
    partial = os.path.join(world["scratch"], "data", "store", "images", "partial")
    assert not os.path.isdir(partial) or os.listdir(partial) == [], os.listdir(partial)
    names = [t["name"] for t in c.call("template.list", {})["templates"]]
    assert "broken" not in names


def test_unknown_images_and_registries_get_clear_errors(world):
    from sandpit import SandpitError
    c, reg = world["client"], world["registry"]
    with pytest.raises(SandpitError) as e:
        build(c, "missing", f"FROM {reg}/nope:1\n")
    assert e.value.code == "not_found", e.value
    # A bare name that is no template: tried as a Docker Hub image (offline here, or no such repository), and the
    # error says both.
    with pytest.raises(SandpitError) as e:
        build(c, "typo", "FROM no-such-template-here:1\n")
    assert "no template no-such-template-here:1" in str(e.value), e.value
    # Not named insecure: HTTPS, which a plain-HTTP registry cannot speak.
    port = int(reg.split(":")[1])
    with pytest.raises(SandpitError) as e:
        build(c, "tls", f"FROM localhost:{port}/mini:1\n")
    assert e.value.code == "unavailable", e.value


def test_template_pull_from_the_cli(world):
    r = subprocess.run([sandpit_bin(), "template", "pull", f"{world['registry']}/mini:1", "--socket", world["sock"]],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = {(t["name"], t["tag"]) for t in world["client"].call("template.list", {})["templates"]}
    assert ("mini", "1") in names, names


def world_layers(world, image):
    m = json.loads(open(world["storage"] / "docker/registry/v2/blobs/sha256" / world["images"][image][7:9] / world["images"][image][7:] / "data").read())
    return [l["digest"] for l in m["layers"]]


def test_a_download_cut_short_resumes_from_what_is_on_disk(world):
    """A .partial file left by an interrupted pull is continued (Range), not started over: with its first
    half right the pull completes; with it wrong the digest check refuses the result and drops it."""
    from sandpit import SandpitError
    reg = world["registry"]
    c, scratch, _ = world["start"]("--insecure-registry", reg)   # a store that has none of mini:2's layers
    own = world_layers(world, "mini:2")[1]
    blob = (world["storage"] / "docker/registry/v2/blobs/sha256" / own[7:9] / own[7:] / "data").read_bytes()
    partial = os.path.join(scratch, "data", "store", "images", "partial")
    os.makedirs(partial, exist_ok=True)
    path = os.path.join(partial, own[7:] + ".partial")
    with open(path, "wb") as f:
        f.write(bytes(b ^ 0xFF for b in blob[:len(blob) // 2]))
    with pytest.raises(SandpitError) as e:
        build(c, "resumed", f"FROM {reg}/mini:2\n")
    assert e.value.code == "digest_mismatch" and not os.path.exists(path), e.value
    with open(path, "wb") as f:
        f.write(blob[:len(blob) // 2])
    build(c, "resumed", f"FROM {reg}/mini:2\n")
    assert run(c, "resumed", ["/bin/cat", "/etc/motd"])[1] == "the second image\n"
    assert not os.path.exists(path)


def test_tls_needs_a_trusted_ca_and_a_private_repository_its_credentials(world):
    from sandpit import SandpitError
    private, ca = world["private"], world["ca"]
    spec = f"FROM {private}/team/mini:1\n"
    # A self-signed certificate the daemon was not told to trust.
    with pytest.raises(SandpitError) as e:
        build(world["client"], "private", spec)
    assert e.value.code == "unavailable" and "TLS" in str(e.value) and e.value.data.get("tls") is True, e.value
    # Trusted, but no credentials: a clear permission_denied.
    c, _, _ = world["start"]("--registry-ca", f"{private}={ca}")
    with pytest.raises(SandpitError) as e:
        build(c, "private", spec)
    assert e.value.code == "permission_denied" and "credentials" in str(e.value), e.value
    # Credentials from a Docker client config, and then from --registry-auth (a wrong password is refused).
    cfg = world["tmp"] / "docker"
    cfg.mkdir(exist_ok=True)
    import base64
    (cfg / "config.json").write_text(json.dumps({"auths": {private: {"auth": base64.b64encode(b"agent:s3cret").decode()}}}))
    c, _, _ = world["start"]("--registry-ca", f"{private}={ca}", env={"DOCKER_CONFIG": str(cfg)})
    build(c, "private", spec)
    assert run(c, "private", ["/bin/cat", "/etc/motd"])[1] == "from the registry\n"
    c, _, _ = world["start"]("--registry-ca", f"{private}={ca}", "--registry-auth", f"{private}=agent:wrong")
    with pytest.raises(SandpitError) as e:
        build(c, "private", spec)
    assert e.value.code == "permission_denied" and "s3cret" not in str(e.value) and "wrong" not in str(e.value), e.value


def test_builds_from_two_clients_at_once_one_with_a_large_layer(world):
    """As agent frameworks do: two clients build at once (the daemon runs builds one at a time; neither is
    lost), one pulling a 24 MiB layer whose progress comes in MiB steps and ends at its size."""
    import concurrent.futures
    from sandpit import Client
    reg, sock = world["registry"], world["sock"]
    events = []

    def one(name, image):
        c = Client(sock)
        try:
            build(c, name, f"FROM {reg}/{image}\nRUN echo {name} > /home/user/who\n", events if image == "big:1" else None)
            return run(c, name, ["/bin/sh", "-c", "cat /etc/motd /home/user/who; ls /opt 2>/dev/null"])[1]
        finally:
            c.close()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        big = pool.submit(one, "parallel-big", "big:1")
        small = pool.submit(one, "parallel-small", "mini:1")
        assert big.result(timeout=600) == "big\nparallel-big\nbulk.bin\n"
        assert small.result(timeout=600) == "from the registry\nparallel-small\n"
    layer = world_layers(world, "big:1")[1]
    mine = [e["bytesDone"] for e in events if e.get("layer") == layer]
    total = [e["bytesTotal"] for e in events if e.get("layer") == layer][0]
    assert total > 24 << 20 and mine[0] == 0 and mine[-1] == total and len(mine) >= 10 and mine == sorted(mine), mine
