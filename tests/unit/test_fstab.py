"""The fstab helper's translation: mount(8)'s ``SOURCE MOUNTPOINT -o OPTIONS`` into an
``hcafs mount`` command line (no mount here; tests/test_mount_fstab.py mounts for real)."""

from __future__ import annotations

import pytest

from hcafs.cli import _mount_options
from hcafs.errors import ConfigError
from hcafs.mount.fstab import mount_command


def test_options_become_hcafs_mount_options():
    command, user = mount_command(
        ["https://dss.example.org", "/srv/hca", "-o",
         "rw,noauto,_netdev,x-systemd.automount,token_file=/t,cache_dir=/c,"
         "staging=s3://b/p,insecure,setuid=ann,write-back-delay=5"], _mount_options())
    assert command == ["mount", "/srv/hca", "--token-file", "/t", "--cache-dir", "/c",
                       "--staging", "s3://b/p", "--insecure", "--write-back-delay", "5",
                       "--dss-url", "https://dss.example.org"]
    assert user == "ann"


def test_dss_url_as_an_option_and_the_embedded_server():
    command, _ = mount_command(["hcafs", "/m", "-o", "dss_url=http://127.0.0.1:1"],
                               _mount_options())
    assert command == ["mount", "/m", "--dss-url", "http://127.0.0.1:1"]
    assert mount_command(["hcafs", "/m"], _mount_options()) == (["mount", "/m"], None)


@pytest.mark.parametrize("argv, words", [
    (["x", "/m", "-o", "token=secret"], "token_file"),
    (["x", "/m", "-o", "colour=blue"], "unknown hcafs option 'colour'"),
    (["x", "/m", "-o", "cache_dir"], "needs a value"),
    (["x", "/m", "-o", "insecure=yes"], "is a flag"),
    (["ftp://x", "/m"], "give the DSS URL"),
    (["/m"], "usage"),
])
def test_bad_lines_are_refused_with_the_reason(argv, words):
    with pytest.raises(ConfigError, match=words):
        mount_command(argv, _mount_options())
