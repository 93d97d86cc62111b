"""Collection links by any name, on real mounts: ``ln -s ../../bundles/<fqid>
MOUNT/collections/c1/reads`` adds the item on the server; this mount shows it as ``reads``,
another mount as its FQID."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from fixtures.dss_server import USER
from fixtures.hcafs_mount import Mount, needs_fuse

pytestmark = needs_fuse


def test_a_link_by_any_name(mount_world, tmp_path):
    fqid = mount_world["fqid"]
    client = mount_world["client"]
    with Mount(str(tmp_path / "a"), mount_world["server"].url, token=USER) as mount:
        c1 = Path(mount.path) / "collections" / "c1"
        os.mkdir(c1)
        subprocess.run(["ln", "-s", f"../../bundles/{fqid}", str(c1 / "reads")], check=True)
        assert os.readlink(c1 / "reads") == f"../../bundles/{fqid}"
        listing = subprocess.run(["ls", "-l", str(c1)], capture_output=True, text=True,
                                 check=True).stdout
        assert f"reads -> ../../bundles/{fqid}" in listing
        assert (c1 / "reads" / "metadata" / "cell.json").read_bytes() == b'{"cells": 42}\n'
        uuid = os.getxattr(c1, "user.hca.uuid").decode()
        contents = client.get_collection(uuid)["contents"]
        assert [(c["type"], f"{c['uuid']}.{c['version']}") for c in contents] == \
            [("bundle", fqid)]
        with Mount(str(tmp_path / "b"), mount_world["server"].url, token=USER) as other:
            elsewhere = Path(other.path) / "collections" / "c1"
            assert os.listdir(elsewhere) == [fqid]
            assert os.readlink(elsewhere / fqid) == f"../../bundles/{fqid}"
        # the name stays on this mount across a remount (kept in the cache)
    with Mount(str(tmp_path / "a"), mount_world["server"].url, token=USER) as mount:
        c1 = Path(mount.path) / "collections" / "c1"
        assert os.listdir(c1) == ["reads"]
        os.unlink(c1 / "reads")
        assert client.get_collection(uuid)["contents"] == []
        os.rmdir(c1)
        assert "c1" not in os.listdir(Path(mount.path) / "collections")
