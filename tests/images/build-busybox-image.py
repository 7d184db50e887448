#!/usr/bin/env python3
"""Builds an OCI image archive of Debian's busybox-static, for `ctr images import`.

No registry is reachable from our machines, so test images are made locally: one
uncompressed layer with /bin/busybox, its applet links, /etc/passwd and the usual
mount points. The archive is deterministic (fixed mtimes and ordering), so the
image digest only changes when busybox does.

usage: build-busybox-image.py OUT.tar [IMAGE_NAME]
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

BUSYBOX = "/bin/busybox"


def add(tar, name, data=None, mode=0o755, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.mode = mode
    info.type = kind
    info.linkname = link
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def layer():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["bin", "dev", "etc", "proc", "root", "sys", "tmp"]:
            add(tar, d, mode=0o1777 if d == "tmp" else 0o755, kind=tarfile.DIRTYPE)
        with open(BUSYBOX, "rb") as f:
            add(tar, "bin/busybox", f.read())
        applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
        for a in sorted(set(applets) - {"busybox"}):
            add(tar, f"bin/{a}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n", 0o644)
        add(tar, "etc/group", b"root:x:0:\nnobody:x:65534:\n", 0o644)
    return buf.getvalue()


def blob(tar, data):
    digest = hashlib.sha256(data).hexdigest()
    add(tar, f"blobs/sha256/{digest}", data, 0o644)
    return f"sha256:{digest}", len(data)


def main():
    out = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else "docker.io/hull/busybox:latest"
    lay = layer()
    with tarfile.open(out + ".tmp", mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "blobs", kind=tarfile.DIRTYPE)
        add(tar, "blobs/sha256", kind=tarfile.DIRTYPE)
        lay_digest, lay_size = blob(tar, lay)
        config = json.dumps({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [lay_digest]},
        }, sort_keys=True).encode()
        cfg_digest, cfg_size = blob(tar, config)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": lay_digest, "size": lay_size}],
        }, sort_keys=True).encode()
        man_digest, man_size = blob(tar, manifest)
        index = json.dumps({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": man_digest,
                "size": man_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "latest"},
            }],
        }, sort_keys=True).encode()
        add(tar, "index.json", index, 0o644)
        add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main()
