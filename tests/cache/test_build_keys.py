"""torch_key() remembered on disk under a stamp of torch's files."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

from regionc.cache import build_keys


def _tree(root):
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "_inductor").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"pyc")
    (root / "pkg" / "notes.txt").write_text("not a module")
    (root / "_inductor" / "script.ld").write_text("linker script")
    return root


def _bump(path, text):
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_stamp_follows_the_hashed_files_only(tmp_path):
    root = _tree(tmp_path)
    stamp = build_keys.install_stamp(root)
    assert build_keys.install_stamp(root) == stamp

    _bump(root / "pkg" / "__pycache__" / "mod.cpython-311.pyc", "other bytecode")
    _bump(root / "pkg" / "notes.txt", "edited notes")
    assert build_keys.install_stamp(root) == stamp  # neither is hashed by torch_key()

    _bump(root / "pkg" / "mod.py", "x = 2\n")  # same size, new mtime
    edited = build_keys.install_stamp(root)
    assert edited != stamp
    _bump(root / "_inductor" / "script.ld", "another linker script")  # a non-module file Inductor hashes
    assert build_keys.install_stamp(root) != edited
    before_add = build_keys.install_stamp(root)
    (root / "pkg" / "new.py").write_text("")
    assert build_keys.install_stamp(root) != before_add


def test_stamp_follows_linked_packages_and_skips_non_packages(tmp_path):
    root = _tree(tmp_path / "torch")
    (root / "include").mkdir()  # headers: not a package, not hashed by torch_key()
    (root / "include" / "gen.py").write_text("")
    linked = tmp_path / "store" / "linked"  # an install that links its package directories
    linked.mkdir(parents=True)
    (linked / "__init__.py").write_text("")
    (linked / "impl.py").write_text("y = 1\n")
    (root / "linked").symlink_to(linked, target_is_directory=True)
    (root / "__init__.py").write_text("")
    (root / "loop").symlink_to(root, target_is_directory=True)  # a package cycle: walked once
    stamp = build_keys.install_stamp(root)

    _bump(root / "include" / "gen.py", "z = 3\n")
    assert build_keys.install_stamp(root) == stamp
    _bump(linked / "impl.py", "y = 2\n")
    assert build_keys.install_stamp(root) != stamp


_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch._inductor.codecache as codecache
    from regionc.cache import build_keys

    def no_hashing(*args, **kwargs):
        raise AssertionError("torch_key() hashed torch's sources")

    codecache.build_code_hash = no_hashing  # what torch_key() calls to hash
    build_keys.prepare(Path(sys.argv[1]))
    print(codecache.torch_key().hex())
""")


def test_remembered_torch_key_is_used_by_a_new_process(tmp_path, caplog):
    from torch._inductor.codecache import torch_key

    expected = torch_key().hex()
    build_keys._load_or_remember_torch_key(tmp_path)
    memos = list((tmp_path / "build_keys").iterdir())
    assert [m.read_text().strip() for m in memos] == [expected]

    child = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip().splitlines()[-1] == expected  # Inductor's value, never hashed there

    memos[0].write_text("not a key\n")  # damaged: hashed again and rewritten, with a log line
    with caplog.at_level(logging.WARNING, logger="regionc.cache"):
        build_keys._load_or_remember_torch_key(tmp_path)
    assert "does not hold a build key" in caplog.text
    assert memos[0].read_text().strip() == expected


def test_a_memo_others_can_write_is_ignored(tmp_path, caplog):
    from torch._inductor.codecache import torch_key

    build_keys._load_or_remember_torch_key(tmp_path)
    (memo,) = (tmp_path / "build_keys").iterdir()
    memo.write_text("0" * 64 + "\n")
    memo.chmod(0o666)
    with caplog.at_level(logging.WARNING, logger="regionc.cache"):
        assert build_keys._read_memo(memo) is None
    assert "group/world-writable" in caplog.text
    memo.chmod(0o600)
    assert build_keys._read_memo(memo) == "0" * 64 != torch_key().hex()


def test_without_a_memo_the_new_process_hashes(tmp_path):
    child = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode != 0 and "hashed torch's sources" in child.stderr
