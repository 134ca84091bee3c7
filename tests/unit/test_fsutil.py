import errno

import pytest

from mltrain.fsutil import atomic_write


def test_writes_text_bytes_and_chunks(tmp_path):
    p = tmp_path / "a" / "f.txt"
    atomic_write(p, "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    atomic_write(p, [b"ab", b"cd"], mode=0o600)
    assert p.read_bytes() == b"abcd" and (p.stat().st_mode & 0o777) == 0o600
    assert [x.name for x in p.parent.iterdir()] == ["f.txt"]


def test_failure_keeps_previous_content_and_no_temp(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write(p, "good")

    def chunks():
        yield b"half"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(p, chunks())
    assert p.read_text() == "good" and [x.name for x in tmp_path.iterdir()] == ["f.txt"]
