"""``mount.fuse.hcafs``: the helper ``mount(8)`` runs for an fstab line of type ``fuse.hcafs``.

An fstab line such as::

    https://dss.example.org  /srv/hca  fuse.hcafs  token_file=/home/ann/.hca-token,
        cache_dir=/home/ann/.cache/hcafs/dss,staging=s3://bucket/staged,setuid=ann,
        _netdev,nofail  0 0

(one line in the file; broken here for width)

makes ``mount /srv/hca`` (or ``mount -a`` at boot) run ``mount.fuse.hcafs SOURCE MOUNTPOINT
-o OPTIONS``.  Each option ``name=value`` is the ``hcafs mount`` option ``--name value``
(``_`` or ``-`` alike), a bare ``name`` is a flag (``insecure``, ``drs_allow_http``); the
source is the DSS URL unless ``dss_url=`` is given (``hcafs`` or ``embedded`` as the source
start the embedded server).  Options that are ``mount(8)``'s own (``rw``, ``noauto``,
``nofail``, ``_netdev``, ``x-systemd.*``, ...) are left to it.

``setuid=USER``: when root runs the helper (``mount -a`` at boot), the daemon runs as USER,
not as root: the helper takes USER's uid, gids, home and runtime dir before anything is
created, so the cache dir and runtime dir are USER's own and pass the same 0700 owner
checks as an ``hcafs mount`` USER typed.  The mount is then USER's FUSE mount (made through
the setuid ``fusermount3``; the mountpoint must be writable by USER).
"""

from __future__ import annotations

import os
import pwd

from ..errors import ConfigError

# mount(8)'s own options, which it may hand to a helper: not ours to refuse.
GENERIC = frozenset({"rw", "ro", "defaults", "auto", "noauto", "user", "nouser", "users",
                     "owner", "group", "nofail", "_netdev", "exec", "noexec", "suid",
                     "nosuid", "dev", "nodev", "atime", "noatime", "relatime", "strictatime",
                     "nodiratime", "sync", "async", "loud", "silent"})
GENERIC_PREFIXES = ("x-", "comment=")


def parse_helper_argv(argv: list[str]) -> tuple[str, str, list[str]]:
    """``(source, mountpoint, options)`` of ``SOURCE MOUNTPOINT [-o OPTS] [-n -s -f -v]``."""
    positional, options = [], []
    items = iter(argv)
    for arg in items:
        if arg == "-o":
            value = next(items, None)
            if value is None:
                raise ConfigError("-o needs a list of options")
            options += [o for o in value.split(",") if o]
        elif arg.startswith("-o") and len(arg) > 2:
            options += [o for o in arg[2:].split(",") if o]
        elif arg in ("-n", "-s", "-f", "-v", "--fake", "--no-mtab", "--sloppy", "--verbose"):
            continue
        elif arg.startswith("-"):
            raise ConfigError(f"unknown helper flag {arg}")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise ConfigError("usage: mount.fuse.hcafs SOURCE MOUNTPOINT [-o OPTIONS]")
    return positional[0], positional[1], options


def mount_command(argv: list[str], known: dict[str, bool]) -> tuple[list[str], str | None]:
    """The ``hcafs mount`` argv for the helper's argv, and the ``setuid=`` user (or None).

    ``known`` maps each ``hcafs mount`` long option (without ``--``) to whether it takes a
    value."""
    source, mountpoint, options = parse_helper_argv(argv)
    command, user, dss_url = ["mount", mountpoint], None, None
    for option in options:
        name, has_value, value = option.partition("=")
        if name in GENERIC or option.startswith(GENERIC_PREFIXES):
            continue
        if name == "setuid":
            user = value or None
            continue
        flag = name.replace("_", "-")
        if flag in ("foreground", "ready-fd", "token"):
            raise ConfigError(f"option {name} cannot be used in fstab (use token_file for "
                              "the token: fstab is world-readable)" if flag == "token"
                              else f"option {name} cannot be used in fstab")
        if flag not in known:
            raise ConfigError(f"unknown hcafs option {name!r} in the fstab line")
        if known[flag] and not has_value:
            raise ConfigError(f"option {name} needs a value ({name}=...)")
        if not known[flag] and has_value:
            raise ConfigError(f"option {name} is a flag; write it without a value")
        if flag == "dss-url":
            dss_url = value
        command += [f"--{flag}", value] if known[flag] else [f"--{flag}"]
    if dss_url is None and source.startswith(("http://", "https://")):
        command += ["--dss-url", source]
    elif dss_url is None and source not in ("hcafs", "embedded"):
        raise ConfigError(f"fstab source {source!r}: give the DSS URL (or hcafs for the "
                          "embedded server), or dss_url= in the options")
    return command, user


def become(user: str) -> None:
    """Run on as ``user`` (from root): its groups, gid, uid, home and runtime dir; the
    XDG and HCAFS settings of the calling root session are dropped."""
    try:
        account = pwd.getpwnam(user)
    except KeyError as exc:
        raise ConfigError(f"setuid={user}: no such user") from exc
    if os.geteuid() != account.pw_uid:
        if os.geteuid() != 0:
            raise ConfigError(f"setuid={user} needs root (mount -a runs as root)")
        os.initgroups(user, account.pw_gid)
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    for name in list(os.environ):
        if name.startswith(("XDG_", "HCAFS_")):
            del os.environ[name]
    os.environ.update(HOME=account.pw_dir, USER=user, LOGNAME=user)
    runtime = f"/run/user/{account.pw_uid}"
    if os.path.isdir(runtime) and os.stat(runtime).st_uid == account.pw_uid:
        os.environ["XDG_RUNTIME_DIR"] = runtime
    os.chdir(account.pw_dir if os.path.isdir(account.pw_dir) else "/")


__all__ = ["become", "mount_command", "parse_helper_argv"]
