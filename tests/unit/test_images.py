import hashlib
import json
import os
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from aifactory import images

pytestmark = pytest.mark.unit

REGISTRY = "registry.local:5000"
CTR = Path("/usr/bin/ctr")
CONTAINERD_SOCK = Path("/run/containerd/containerd.sock")


def _elf(p_type: int, interp: bytes = b"") -> bytes:
    """A minimal ELF64 header with one program header of type `p_type` (3 = PT_INTERP, naming `interp`)."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    data = interp + b"\0" if interp else b""
    return ident + header + struct.pack("<IIQQQQQQ", p_type, 5, 120, 0, 0, len(data), 0, 0) + data


def _fake_kube_router(bin_dir: Path) -> images.ImageSpec:
    router = images.ImageFile("/kube-router", bin_dir / "pause", 0o755)  # any static file
    return images.ImageSpec("aifactory/kube-router", "v0", (router,), ("/kube-router",))


def _fake_operator(tmp_path: Path):
    def spec() -> images.ImageSpec:
        (tmp_path / "op").write_bytes(_elf(1) + b"fake operator")
        return images.ImageSpec(
            "aifactory/tenant-operator", "0.0.1", (images.ImageFile("/op", tmp_path / "op", 0o755),), ("/op",)
        )

    return spec


@pytest.fixture
def inputs(tmp_path):
    """Fake static pause, coredns and kueue binaries and busybox, as build_all's bin_dir and busybox
    arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pause").write_bytes(_elf(1) + b"fake pause")
    (bin_dir / "coredns").write_bytes(_elf(1) + b"fake coredns")
    (bin_dir / "kueue").write_bytes(_elf(1) + b"fake kueue")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(_elf(1) + b"fake busybox")
    return bin_dir, busybox


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _layer_members(layer: bytes, tmp_path: Path) -> list[tarfile.TarInfo]:
    p = tmp_path / "layer.tar"
    p.write_bytes(layer)
    with tarfile.open(p) as tar:
        return tar.getmembers()


def test_ref_and_archive_name(inputs):
    bin_dir, busybox = inputs
    spec = images.pause_image(bin_dir)
    assert spec.ref(REGISTRY) == "registry.local:5000/aifactory/pause:3.10"
    assert spec.ref(REGISTRY + "/") == "registry.local:5000/aifactory/pause:3.10"
    assert images.toolbox_image(busybox).archive_name == "aifactory_toolbox_1.0.tar"


def test_same_inputs_give_identical_archives(inputs, tmp_path):
    _, busybox = inputs
    spec = images.toolbox_image(busybox)
    a, b = tmp_path / "a" / "x.tar", tmp_path / "b" / "x.tar"
    da = images.build(spec, a, REGISTRY)
    os.utime(busybox, (1_000_000, 1_000_000))  # the source's own times must not leak in
    db = images.build(spec, b, REGISTRY)
    assert da == db
    assert a.read_bytes() == b.read_bytes()
    assert not [p for p in a.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_archive_is_an_oci_layout_and_a_docker_archive(inputs, tmp_path):
    _, busybox = inputs
    spec = images.toolbox_image(busybox)
    archive = tmp_path / spec.archive_name
    digest = images.build(spec, archive, REGISTRY)
    files = _members(archive)
    ref = "registry.local:5000/aifactory/toolbox:1.0"

    # Every blob is named by its sha256.
    blobs = {n: d for n, d in files.items() if n.startswith("blobs/sha256/")}
    assert len(blobs) == 3
    for name, data in blobs.items():
        assert name == "blobs/sha256/" + hashlib.sha256(data).hexdigest()

    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"] == {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref}
    assert entry["digest"] == digest and entry["mediaType"] == images.MEDIA_MANIFEST
    assert entry["platform"] == {"architecture": images.goarch(), "os": "linux"}

    manifest = json.loads(blobs["blobs/sha256/" + digest.removeprefix("sha256:")])
    config_name = "blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")
    (layer_desc,) = manifest["layers"]
    layer_name = "blobs/sha256/" + layer_desc["digest"].removeprefix("sha256:")
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert layer_desc["size"] == len(blobs[layer_name])

    assert json.loads(files["manifest.json"]) == [
        {"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}
    ]

    config = json.loads(blobs[config_name])
    layer = blobs[layer_name]
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}
    assert config["os"] == "linux" and config["architecture"] == images.goarch()
    assert config["config"] == {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"]}

    members = _layer_members(layer, tmp_path)
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names[:2] == ["bin", "bin/busybox"]
    assert {"etc", "etc/passwd", "etc/group", "bin/sh", "bin/wget"} <= set(names)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
    by_name = {m.name: m for m in members}
    assert by_name["bin"].isdir() and by_name["bin"].mode == 0o755
    assert by_name["bin/busybox"].isfile() and by_name["bin/busybox"].mode == 0o755
    for applet in images.TOOLBOX_APPLETS:
        assert by_name[f"bin/{applet}"].issym() and by_name[f"bin/{applet}"].linkname == "busybox"
    with tarfile.open(tmp_path / "layer.tar") as tar:
        assert tar.extractfile("bin/busybox").read() == busybox.read_bytes()
        passwd = tar.extractfile("etc/passwd").read().decode()
    assert "nobody:x:65534:65534" in passwd

    # The outer archive is deterministic too: no times, no owners.
    with tarfile.open(archive) as tar:
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in tar.getmembers())


def test_pause_image_has_only_the_binary(inputs, tmp_path):
    bin_dir, _ = inputs
    archive = tmp_path / "pause.tar"
    images.build(images.pause_image(bin_dir), archive, REGISTRY)
    files = _members(archive)
    config_name = json.loads(files["manifest.json"])[0]["Config"]
    assert json.loads(files[config_name])["config"] == {"Entrypoint": ["/pause"]}
    layer_name = json.loads(files["manifest.json"])[0]["Layers"][0]
    members = _layer_members(files[layer_name], tmp_path)
    assert [(m.name, m.mode) for m in members] == [("pause", 0o755)]


def test_build_all_writes_every_image(inputs, tmp_path):
    bin_dir, busybox = inputs
    out = tmp_path / "images"
    lines: list[str] = []
    built = images.build_all(
        bin_dir,
        out,
        REGISTRY,
        lines.append,
        busybox=busybox,
        operator=_fake_operator(tmp_path),
        kube_router=_fake_kube_router,
    )
    assert set(built) == {
        "aifactory_pause_3.10.tar",
        "aifactory_toolbox_1.0.tar",
        "aifactory_coredns_1.15.0.tar",
        "aifactory_tenant-operator_0.0.1.tar",
        "aifactory_kube-router_v0.tar",
        "aifactory_kueue_v0.17.0.tar",
    }
    for name, rec in built.items():
        assert (out / name).is_file()
        assert rec["digest"].startswith("sha256:")
    assert built["aifactory_pause_3.10.tar"]["ref"] == "registry.local:5000/aifactory/pause:3.10"
    assert len(lines) == 6


def test_build_all_names_a_missing_input(inputs, tmp_path):
    bin_dir, _ = inputs
    out = tmp_path / "out"

    def build_without_busybox():
        fakes = {"operator": _fake_operator(tmp_path), "kube_router": _fake_kube_router}
        images.build_all(bin_dir, out, REGISTRY, busybox=tmp_path / "no-busybox", **fakes)

    with pytest.raises(images.ImageError) as e:
        build_without_busybox()
    assert f"{tmp_path / 'no-busybox'} missing: install Debian's busybox-static" in str(e.value)
    assert not out.exists()  # nothing built when an input is absent
    (bin_dir / "pause").unlink()
    with pytest.raises(images.ImageError, match="pause missing: build it with"):
        build_without_busybox()


def test_dynamically_linked_binary_is_refused(inputs, tmp_path):
    bin_dir, _ = inputs
    (bin_dir / "pause").write_bytes(_elf(3, b"/lib64/ld-linux-x86-64.so.2"))
    with pytest.raises(images.ImageError, match="dynamically linked and the image lacks its loader /lib64/"):
        images.build(images.pause_image(bin_dir), tmp_path / "p.tar", REGISTRY)
    assert not (tmp_path / "p.tar").exists()


def test_dynamically_linked_binary_with_its_loader_is_built(tmp_path):
    """The loader may be reached through the image's own symlinks (merged /usr: /lib64 -> usr/lib64)."""
    prog, loader = tmp_path / "prog", tmp_path / "ld.so"
    prog.write_bytes(_elf(3, b"/lib64/ld-linux-x86-64.so.2"))
    loader.write_bytes(_elf(1))
    files = (
        images.ImageFile("/bin/prog", prog, 0o755),
        images.ImageFile("/lib64", None, 0o777, symlink_to="usr/lib64"),
        images.ImageFile("/usr/lib64/ld-linux-x86-64.so.2", None, 0o777, symlink_to="../lib/ld.so"),
        images.ImageFile("/usr/lib/ld.so", loader, 0o755),
        images.ImageFile("/tmp", None, 0o1777, directory=True),
    )
    spec = images.ImageSpec("t/prog", "1", files, ("/bin/prog",))
    assert images.build(spec, tmp_path / "p.tar", REGISTRY).startswith("sha256:")
    with pytest.raises(images.ImageError, match="lacks its loader"):  # the symlink dangles without it
        images.build(images.ImageSpec("t/prog", "1", files[:3], ("/bin/prog",)), tmp_path / "q.tar", REGISTRY)


def test_machine_file_keeps_the_symlinks_on_the_way(tmp_path):
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/libz.so.1.2").write_bytes(b"z")
    (tmp_path / "usr/lib/libz.so.1").symlink_to("libz.so.1.2")
    (tmp_path / "lib").symlink_to("usr/lib")
    got = images.machine_file(tmp_path / "lib/libz.so.1", mode=0o644)
    assert [(f.path_in_image, f.symlink_to, f.source) for f in got] == [
        (f"{tmp_path}/lib", "usr/lib", None),
        (f"{tmp_path}/usr/lib/libz.so.1", "libz.so.1.2", None),
        (f"{tmp_path}/usr/lib/libz.so.1.2", None, tmp_path / "usr/lib/libz.so.1.2"),
    ]


def test_python_distributions_follow_requirements_and_skip():
    files = images.python_distributions(["kopf"], "/opt/sp", skip=["kopf/_kits"])
    names = {f.path_in_image for f in files}
    assert "/opt/sp/kopf/__init__.py" in names
    assert "/opt/sp/aiohttp/__init__.py" in names  # kopf requires aiohttp
    assert not any("/kopf/_kits/" in n or "__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.startswith("/opt/sp/uvloop/") for n in names)  # only through kopf's extra
    with pytest.raises(images.ImageError, match="'no-such-dist' is not installed"):
        images.python_distributions(["no-such-dist"], "/opt/sp")


def test_bad_specs_are_refused(tmp_path):
    with pytest.raises(images.ImageError, match="exactly one"):
        images.ImageFile("/x", tmp_path, 0o644, content=b"")
    with pytest.raises(images.ImageError, match="absolute"):
        images.ImageFile("x", None, 0o644, content=b"")
    clash = images.ImageSpec(
        "t/clash",
        "1",
        (
            images.ImageFile("/a", None, 0o644, content=b""),
            images.ImageFile("/a/b", None, 0o644, content=b""),
        ),
        ("/a",),
    )
    with pytest.raises(images.ImageError, match="both a file and a parent directory"):
        images.build(clash, tmp_path / "c.tar", REGISTRY)
    with pytest.raises(images.ImageError, match="no GOARCH"):
        images.goarch("vax")
    assert images.goarch("x86_64") == "amd64" and images.goarch("aarch64") == "arm64"


def _ctr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CTR), "--address", str(CONTAINERD_SOCK), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_containerd_imports_the_archive(inputs, tmp_path):
    if not CTR.exists():
        pytest.skip(f"{CTR} not installed")
    try:
        answered = _ctr("version").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        answered = False
    if not answered:
        pytest.skip(f"containerd does not answer on {CONTAINERD_SOCK}")
    _, busybox = inputs
    spec = images.toolbox_image(busybox)
    archive = tmp_path / spec.archive_name
    digest = images.build(spec, archive, REGISTRY)
    ref, ns = spec.ref(REGISTRY), "aifactory-test"  # not k8s.io: the kubelet never sees this image
    try:
        proc = _ctr("-n", ns, "images", "import", str(archive))
        assert proc.returncode == 0, proc.stderr
        listed = _ctr("-n", ns, "images", "ls")
        rows = [line.split() for line in listed.stdout.splitlines()[1:]]
        assert [ref, digest] in [row[:1] + row[2:3] for row in rows], listed.stdout
    finally:
        _ctr("-n", ns, "images", "rm", "--sync", ref)


def test_kube_router_image_names_missing_firewall_tools(inputs, tmp_path):
    bin_dir, _ = inputs
    (bin_dir / "kube-router").write_bytes(_elf(1))
    spec = images.kube_router_image(bin_dir, tools=(tmp_path / "iptables", tmp_path / "ipset"))
    assert spec.missing_inputs() == [
        f"{tmp_path / 'iptables'} missing: install Debian's iptables",
        f"{tmp_path / 'ipset'} missing: install Debian's ipset",
    ]
