"""Finding 6: at the workspace's top level the Landlock backend behaves like bubblewrap (entries
are created, removed, renamed, replaced) while `.git` and `.m2agent` stay untouchable, even
through the broker that makes this possible (`tools/sandbox/broker.py`). Each test runs on both
backends (bubblewrap is the reference), as root and as an unprivileged user."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from harness import NOBODY, Attacker

from m2agent.tools.sandbox import notify

pytestmark = pytest.mark.skipif(
    not notify.supported(), reason="the broker needs Linux >= 5.14 on x86_64 or aarch64"
)


def _own(attacker: Attacker, *paths: Path) -> None:
    if attacker.user == "nobody":
        for path in paths:
            os.lchown(path, NOBODY, NOBODY)


def _refused(message: str, name: str, output: str) -> bool:
    """Whether a line says `message` about `name` with EACCES (quotes vary with the locale)."""
    return any(
        message in line and name in line and line.endswith("Permission denied")
        for line in output.splitlines()
    )


def _python(script: str) -> str:
    """A command running `script` with the system's python3 (as the model would)."""
    return "python3 - <<'EOF'\n" + textwrap.dedent(script) + "EOF\n"


def test_top_level_entries_are_created_changed_and_removed(attacker: Attacker) -> None:
    ws = attacker.workspace
    (ws / "a.txt").write_text("a\n")
    (ws / "sub").mkdir()
    (ws / "sub/x").write_text("x\n")
    (ws / "olddir").mkdir()
    (ws / "olddir/f").write_text("f\n")
    _own(attacker, ws / "a.txt", ws / "sub", ws / "sub/x", ws / "olddir", ws / "olddir/f")
    git = "git -c user.email=a@b.c -c user.name=n"
    first, second = attacker.run(
        "set -e; touch new && echo one >> new && cat new; "
        "mkdir -p build/a/b && echo deep > build/a/b/f && cat build/a/b/f; "
        "sed -i s/hello/HELLO/ README.md && echo more >> README.md && cat README.md; "
        "mv a.txt sub/ && mv sub/x . && ls sub; "
        f"git init -q repo && {git} -C repo commit -q --allow-empty -m m && "
        "git -C repo log --oneline | wc -l; "
        "umask 027 && touch masked && mkdir maskdir && stat -c %a masked maskdir; "
        "ln -s .. sub/up && touch sub/up/vialink && rm sub/up; "
        "rm new && rm -rf olddir build && mkdir olddir && echo r > olddir/f && cat olddir/f; "
        "ls",
        "rm -rf ./* && ls -A",
    )
    assert first.exit_code == 0, first.output
    lines = first.output.split()
    assert lines[:6] == ["one", "deep", "HELLO", "more", "a.txt", "1"], first.output
    assert lines[6:8] == ["640", "750"], first.output
    assert lines[8] == "r", first.output  # a replaced top-level folder is writable too
    assert sorted(lines[9:]) == [
        "README.md", "maskdir", "masked", "olddir", "repo", "sub", "vialink", "x",
    ]  # fmt: skip
    assert second.exit_code == 0 and second.output.split() == [".git"], second.output
    assert (ws / ".git/HEAD").is_file() and os.listdir(ws) == [".git"]


def test_protected_names_cannot_be_made_moved_or_replaced(attacker: Attacker) -> None:
    ws = attacker.workspace
    head = (ws / ".git/HEAD").read_bytes()
    result = attacker.one(
        "mkdir .m2agent; touch x; mv x .m2agent; ln -s /tmp .m2agent; "
        "mv .git moved; rm -rf .git; mkdir d; mv d .git; "
        + _python(
            """
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            RENAME_EXCHANGE = 2
            r = libc.renameat2(-100, b"d", -100, b".git", RENAME_EXCHANGE)
            print("exchange", r, ctypes.get_errno())
            """
        )
        + "ls -A"
    )
    names = set(result.output.split()[-4:])
    assert not (ws / ".m2agent").exists() or attacker.backend == "bwrap"
    assert (ws / ".git/HEAD").read_bytes() == head and not (ws / "moved").exists()
    assert "exchange -1" in result.output, result.output
    if attacker.backend == "landlock":  # refused by the kernel, with its own errors
        assert names == {".git", "README.md", "d", "x"}, result.output
        assert "exchange -1 13" in result.output, result.output
        assert _refused("mkdir: cannot create directory", ".m2agent", result.output)
        assert not result.notes
    else:  # bubblewrap lets it be created, the runner removes it afterwards
        assert not (ws / ".m2agent").exists()


def test_a_missing_git_cannot_be_created(attacker: Attacker) -> None:
    ws = attacker.workspace
    for path in sorted((ws / ".git").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (ws / ".git").rmdir()
    result = attacker.one(
        "mkdir .git; git init -q; ln -s sub .git; touch x; mv x .git; ls -A; true"
    )
    assert not os.path.lexists(ws / ".git"), result.output
    if attacker.backend == "landlock":
        assert _refused("mkdir: cannot create directory", ".git", result.output), result.output


def test_links_into_git_cannot_be_written_through(attacker: Attacker) -> None:
    ws = attacker.workspace
    config = (ws / ".git/config").read_bytes()
    result = attacker.one(
        "ln -s .git/hooks/pre-commit hook; echo evil > hook; "
        "ln -s .git/hooks/post-commit dangling; "
        "ln .git/config hard; ln -L hook hard2; "
        + _python(
            """
            import os
            def attempt(what, path, flags=os.O_WRONLY | os.O_APPEND, **kw):
                try:
                    os.close(os.open(path, flags, 0o755, **kw))
                    print("OPENED", what)
                except OSError as e:
                    print("refused", what, e.errno)
            attempt("dangling", "dangling", os.O_WRONLY | os.O_CREAT)
            git = os.open(".git", os.O_RDONLY)
            attempt("dirfd", "config", dir_fd=git)
            attempt("dirfd-new", "hooks/pre-push", os.O_WRONLY | os.O_CREAT, dir_fd=git)
            attempt("proc-cwd", "/proc/self/cwd/.git/config")
            attempt("proc-fd", f"/proc/self/fd/{git}/config")
            attempt("proc-pid", f"/proc/{os.getpid()}/cwd/.git/config")
            attempt("dotdot", "hook/../.git/config")
            attempt("abs", os.getcwd() + "/.git/config")
            """
        )
    )
    assert "OPENED" not in result.output, result.output
    hooks = {p.name for p in (ws / ".git/hooks").iterdir()}
    assert not hooks & {"pre-commit", "post-commit", "pre-push"}, hooks
    assert (ws / ".git/config").read_bytes() == config
    assert not (ws / "hard").exists() and not (ws / "hard2").exists()


def test_the_broker_writes_nothing_outside(attacker: Attacker) -> None:
    public = attacker.public
    before = set(os.listdir(public))
    result = attacker.one(
        f"echo x > ../out1; mkdir ../out2; ln -s {public} up; echo x > up/out3; "
        f"mkdir up/out4; touch t && mv t ../out5; mv README.md {public}/out6; "
        f"ln -s ../out7 link && echo x > link; ln README.md ../out8; "
        f"cd up && touch out9; ls {public}"
    )
    assert set(os.listdir(public)) == before, result.output
    assert (attacker.workspace / "README.md").exists()


def test_a_racing_thread_cannot_flip_the_path(attacker: Attacker) -> None:
    """The broker reads the path once and acts on what it resolved; what the kernel re-reads
    after a CONTINUE is judged by the command's own Landlock layers."""
    ws = attacker.workspace
    config = (ws / ".git/config").read_bytes()
    result = attacker.one(
        _python(
            """
            import ctypes, os, threading, time
            libc = ctypes.CDLL(None, use_errno=True)
            buf = ctypes.create_string_buffer(64)
            safe, evil = b"flip\\0", b".git/config\\0"
            stop = False
            def flip():
                while not stop:
                    ctypes.memmove(buf, safe, len(safe))
                    ctypes.memmove(buf, evil, len(evil))
            def swap():
                while not stop:
                    try:
                        os.symlink(".git/config", "link.tmp")
                        os.rename("link.tmp", "link")
                        with open("plain.tmp", "w"):
                            pass
                        os.rename("plain.tmp", "link")
                    except OSError:
                        pass
            threads = [threading.Thread(target=flip), threading.Thread(target=swap)]
            for t in threads:
                t.start()
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
            opened = refused = 0
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                for path in (buf, b"link"):
                    fd = libc.open(path, flags, 0o644)
                    if fd >= 0:
                        os.write(fd, b"evil\\n")
                        os.close(fd)
                        opened += 1
                    else:
                        refused += 1
            stop = True
            for t in threads:
                t.join()
            print("opened", opened, "refused", refused)
            """
        ),
        timeout_s=60,
    )
    assert (ws / ".git/config").read_bytes() == config, result.output
    counts = result.output.split()
    assert counts[0] == "opened" and int(counts[1]) > 0, result.output  # the race did run


def test_no_command_creates_a_setuid_file(attacker: Attacker) -> None:
    """Not with chmod (test_escape.py), nor by creating it so: open/openat with O_CREAT,
    creat, mknod, openat2 (whose mode the filter cannot read: ENOSYS), at the top level (the
    broker) or in an existing folder (the kernel)."""
    (attacker.workspace / "sub").mkdir()
    _own(attacker, attacker.workspace / "sub")
    result = attacker.one(
        _python(
            """
            import ctypes, os, stat, struct
            libc = ctypes.CDLL(None, use_errno=True)
            for path in ("suid", "sub/suid"):
                for mode in (0o4755, 0o2755):
                    for how in ("open", "creat", "mknod"):
                        name = f"{path}-{how}-{mode:o}"
                        if how == "open":
                            r = libc.open(name.encode(), os.O_CREAT | os.O_WRONLY, mode)
                        elif how == "creat":
                            r = libc.creat(name.encode(), mode)
                        else:
                            r = libc.mknod(name.encode(), stat.S_IFREG | mode, 0)
                        print(name, r if r < 0 else "made", ctypes.get_errno())
            how = struct.pack("QQQ", os.O_CREAT | os.O_WRONLY, 0o4755, 0)
            r = libc.syscall(437, -100, b"suid-openat2", how, len(how))
            print("openat2", r, ctypes.get_errno())
            """
        )
        + "ls -l . sub"
    )
    found = [p for p in attacker.workspace.rglob("*suid*") if p.stat().st_mode & 0o6000]
    assert not found, result.output
    assert "openat2 -1 38" in result.output, result.output


def test_a_hidden_secret_cannot_be_renamed_into_view(attacker: Attacker) -> None:
    """A secret hidden inside the workspace stays hidden: renamed or linked at the top level
    it would be an ordinary, readable file for the next command."""
    secret = attacker.workspace / ".env"
    secret.write_text("TOKEN=hunter2\n")
    _own(attacker, secret)
    first, second = attacker.run(
        "cat .env; mv .env moved; ln .env linked; cp .env copied; mkdir d; mv .env d/x; ls -A",
        "cat moved linked copied d/x .env; ls -A",
        deny_read=[str(secret)],
    )
    assert "hunter2" not in first.output + second.output, (first.output, second.output)
    assert secret.read_text() == "TOKEN=hunter2\n"


def test_a_nested_secret_stays_hidden_and_its_folder_stays_usable(attacker: Attacker) -> None:
    conf = attacker.workspace / "conf"
    conf.mkdir()
    (conf / "secret.key").write_text("hunter2\n")
    (conf / "other").write_text("o\n")
    _own(attacker, conf, conf / "secret.key", conf / "other")
    first, second = attacker.run(
        "mv conf/secret.key conf/x; ln conf/secret.key conf/l; mv conf moved; "
        "touch conf/new && rm conf/other && mkdir conf/sub && echo ok; ls -A conf",
        "cat conf/x conf/l moved/secret.key conf/secret.key; ls -A . conf",
        deny_read=[str(conf / "secret.key")],
    )
    assert "hunter2" not in first.output + second.output, (first.output, second.output)
    assert "ok" in first.output.split(), first.output
    assert (conf / "secret.key").read_text() == "hunter2\n"
    assert sorted(os.listdir(conf)) == ["new", "secret.key", "sub"]


FALLBACK_SCRIPT = """
import ctypes, struct, subprocess, sys
from m2agent.tools.sandbox import launcher, notify
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # no_new_privs
# A filter that allows everything but holds a listener: the kernel allows one listener per
# process, so the launcher's command cannot install the broker's and must do without it.
notify.install_listener(struct.pack("HBBI", 0x06, 0, 0, 0x7FFF0000))
workspace, tmp = sys.argv[1], sys.argv[2]
argv = [sys.executable, "-I", "-S", launcher.script_path(), "--workspace", workspace,
        "--tmp", tmp, "--cwd", workspace, "--", "/bin/bash", "-c",
        "echo changed > README.md && cat README.md; touch new; echo $?"]
done = subprocess.run(argv, capture_output=True, text=True, cwd="/")
print(done.returncode, done.stdout, done.stderr)
"""


def test_without_the_broker_the_top_level_stays_closed(public: Path) -> None:
    """Where the broker cannot run, the command still runs, with layer 2 alone: existing
    top-level entries writable, nothing created at the top level (the old behaviour)."""
    import subprocess
    import sys
    import tempfile

    from harness import make_attacker

    attacker = make_attacker("landlock", "root", public)
    tmp = tempfile.mkdtemp(dir=public)
    done = subprocess.run(
        [sys.executable, "-I", "-c", FALLBACK_SCRIPT, str(attacker.workspace), tmp],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:3] == ["0", "changed", "1"], done.stdout
    assert "Permission denied" in done.stdout, done.stdout
    assert not (attacker.workspace / "new").exists()
