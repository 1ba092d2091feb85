"""Running `vmr` commands on a tiny tmpfs (a full disk) and on a read-only one.

Not a test module: tests import it (`from small_fs import run_on_small_fs`). One child
process mounts a tmpfs of `size` at `mount`, runs each command of `full` through the CLI
entry point (lightning_app.cli.main), records its exit code, stdout, stderr and what it
left on the tmpfs (a listing, plus a copy under `snapshots/<case>`), empties the tmpfs,
then remounts it read-only for the commands of `read_only`, and unmounts it. The child runs
as root when this process may mount (CI, containers as root), else in a user and mount
namespace (`unshare --user --map-root-user --mount`). When neither works the test fails
with a message saying so: these checks are never skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import contextlib, io, json, os, shutil, subprocess, sys
    sys.path.insert(0, os.getcwd())
    from lightning_app.cli import main

    spec = json.loads(sys.argv[1])
    mount, snaps = spec["mount"], spec["snapshots"]

    def sh(*args):
        subprocess.run(args, check=True, capture_output=True)

    def run(name, argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code
            except BaseException as e:  # a traceback: recorded, and the test fails on it
                import traceback
                err.write("Traceback (most recent call last):\\n" + traceback.format_exc())
                rc = 1
        files = sorted(os.path.relpath(os.path.join(d, f), mount)
                       for d, _, fs in os.walk(mount) for f in fs)
        shutil.copytree(mount, os.path.join(snaps, name), symlinks=True)
        return {"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "files": files}

    sh("mount", "-t", "tmpfs", "-o", f"size={spec['size']}", "tmpfs", mount)
    results = {}
    try:
        for name, argv in spec["full"].items():
            results[name] = run(name, argv)
            for entry in os.listdir(mount):
                path = os.path.join(mount, entry)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        sh("mount", "-o", "remount,ro", mount)
        for name, argv in spec["read_only"].items():
            results[name] = run(name, argv)
    finally:
        sh("umount", mount)
    with open(spec["results"], "w") as f:
        json.dump(results, f)
""")


def _can_mount(prefix: list[str], probe: Path) -> bool:
    script = f"mount -t tmpfs -o size=16k tmpfs '{probe}' && umount '{probe}'"
    try:
        done = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def mount_prefix(probe: Path) -> list[str]:
    """How to run a child that may mount: directly, or in its own namespaces."""
    probe.mkdir(parents=True, exist_ok=True)
    if _can_mount([], probe):
        return []
    userns = ["unshare", "--user", "--map-root-user", "--mount"]
    if shutil.which("unshare") and _can_mount(userns, probe):
        return userns
    raise AssertionError(
        "cannot mount a tmpfs for the full-disk tests: not as this user (needs root or "
        "CAP_SYS_ADMIN) and not in a user namespace (unshare --user --map-root-user --mount "
        "failed; enable kernel.unprivileged_userns_clone or run the tests as root)")


def _still_mounted(path: Path) -> bool:
    text = Path("/proc/mounts").read_text()
    return any(line.split()[1] == str(path) for line in text.splitlines() if line.strip())


def run_on_small_fs(tmp: Path, size: str, full: dict[str, list[str]],
                    read_only: dict[str, list[str]], timeout: float = 600) -> dict:
    """{case: {"rc", "out", "err", "files"}}; the mount point is `tmp / "small"`."""
    mount, snaps = tmp / "small", tmp / "snapshots"
    mount.mkdir(parents=True, exist_ok=True)
    snaps.mkdir(exist_ok=True)
    results = tmp / "results.json"
    spec = {"mount": str(mount), "snapshots": str(snaps), "size": size, "full": full,
            "read_only": read_only, "results": str(results)}
    prefix = mount_prefix(tmp / "probe")
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", CHILD, json.dumps(spec)],
                              cwd=PROJECT, capture_output=True, text=True, timeout=timeout)
    finally:
        if _still_mounted(mount):  # the child died before unmounting
            subprocess.run(["umount", str(mount)], capture_output=True)
    assert done.returncode == 0 and results.exists(), done.stderr[-3000:]
    return json.loads(results.read_text())


def error_lines(result: dict) -> list[str]:
    return [line for line in result["err"].splitlines() if line.startswith("vmr: error:")]
