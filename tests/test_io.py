"""lookhere.io: atomic writes land with the permissions a plain mkdir/open would give, leave
nothing behind on failure, and never overwrite a non-empty folder."""

import os

import pytest

from lookhere.io import atomic_dir, atomic_path, safe_name, write_json


@pytest.fixture()
def umask():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


def test_modes_follow_the_umask(tmp_path, umask):
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    path = write_json({"a": 1}, tmp_path / "j.json")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_failures_leave_nothing_and_nothing_is_overwritten(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("x")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine").write_text("keep")
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "full"):
        pass
    assert (tmp_path / "full" / "mine").read_text() == "keep"


def test_leftovers_of_dead_writers_are_removed(tmp_path):
    """kill -9 mid-write leaves `.<name>.<pid>.*`; the next write of that output removes it when
    its process is gone, and never touches a live writer's."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale_dir = tmp_path / f".d.{dead}.abc"
    stale_dir.mkdir()
    (stale_dir / "big").write_text("x")
    stale_file = tmp_path / f".f.json.{dead}.xyz.tmp"
    stale_file.write_text("x")
    live = tmp_path / f".d.{os.getpid()}.keep"
    live.mkdir()
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
    write_json({}, tmp_path / "f.json")
    assert not stale_dir.exists() and not stale_file.exists() and live.is_dir()
    assert (tmp_path / "d" / "f").is_file()


@pytest.mark.parametrize("text, name", [("a b/c", "a_b_c"), ("ok-1.2_x", "ok-1.2_x"),
                                        ("..", "_.."), ("", "_"), ("é", "_")])
def test_safe_name(text, name):
    assert safe_name(text) == name
