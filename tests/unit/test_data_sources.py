"""Sources: every input kind, bad bytes skipped and counted, clear errors for missing/empty input."""

from __future__ import annotations

import json
import os
import socket
import sys
import types
from pathlib import Path

import pytest

from mltrain.config import DataConfig
from mltrain.data.sources import BUILTIN_STDLIB, SourceStats, builtin_stdlib_files, iter_documents, read_corpus
from mltrain.errors import DataError


def docs_of(tmp_path: Path, sources: list[str], **kw) -> tuple[list[str], SourceStats]:
    stats = SourceStats()
    return list(iter_documents(DataConfig(sources=sources, dir=str(tmp_path / "out"), **kw), stats)), stats


def test_txt_one_doc_per_file_and_dir_recursive_sorted(tmp_path: Path) -> None:
    (tmp_path / "c" / "sub").mkdir(parents=True)
    (tmp_path / "c" / "b.txt").write_text("second")
    (tmp_path / "c" / "a.txt").write_text("\ufefffirst")  # BOM is dropped
    (tmp_path / "c" / "sub" / "z.txt").write_text("third\nline")
    (tmp_path / "c" / "notes.bin").write_bytes(b"\x00\x01")  # not a known suffix: ignored in dirs
    docs, stats = docs_of(tmp_path, [str(tmp_path / "c")])
    assert docs == ["first", "second", "third\nline"]
    assert (stats.files, stats.docs, stats.skipped_docs) == (3, 3, 0)
    assert stats.bytes == len("first") + len("second") + len("third\nline")


def test_jsonl_field_and_bad_lines_counted(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"content": "alpha"}).encode(),
        b"",  # blank line: not a document, not counted
        b'{"content": "caf\xe9"}',  # latin-1 byte: non-UTF-8
        b"{not json",
        json.dumps({"other": "x"}).encode(),
        json.dumps({"content": 3}).encode(),
        json.dumps({"content": "  "}).encode(),
        json.dumps({"content": "beta"}).encode(),
    ]
    p.write_bytes(b"\n".join(lines) + b"\n")
    docs, stats = docs_of(tmp_path, [str(p)], text_field="content")
    assert docs == ["alpha", "beta"]
    assert stats.skipped_docs == 5
    assert dict(stats.skipped_reasons) == {
        "non-utf8": 1,
        "invalid-json": 1,
        "missing-field": 1,
        "not-text": 1,
        "empty": 1,
    }
    assert stats.skipped_files == 0
    assert any(":3: non-utf8" in ex for ex in stats.examples)


def test_jsonl_without_the_field_names_file_and_field(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_text('{"body": "a"}\n{"body": "b"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl.*'text'.*data\.text_field"):
        docs_of(tmp_path, [str(p)])


def test_parquet_and_missing_column(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["one", None, "two", ""], "n": [1, 2, 3, 4]}), p)
    docs, stats = docs_of(tmp_path, [str(p)])
    assert docs == ["one", "two"]
    assert dict(stats.skipped_reasons) == {"missing-field": 1, "empty": 1}
    with pytest.raises(DataError, match=r"d\.parquet.*no column 'body'.*text, n"):
        docs_of(tmp_path, [str(p)], text_field="body")


def test_glob_and_non_utf8_txt_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("good one")
    (tmp_path / "b.txt").write_bytes(b"bad \xff\xfe bytes")
    (tmp_path / "c.txt").write_text("good two")
    (tmp_path / "c.md").write_text("not matched by the glob")
    docs, stats = docs_of(tmp_path, [str(tmp_path / "*.txt")])
    assert docs == ["good one", "good two"]
    assert (stats.files, stats.skipped_docs, stats.skipped_files) == (3, 1, 1)
    assert stats.skipped_reasons["non-utf8"] == 1
    assert "b.txt" in stats.examples[0]


def test_missing_path_and_empty_glob_and_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.txt: no such file or directory"):
        docs_of(tmp_path, [str(tmp_path / "nope.txt")])
    with pytest.raises(DataError, match="glob matches no files"):
        docs_of(tmp_path, [str(tmp_path / "*.jsonl")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: directory has no"):
        docs_of(tmp_path, [str(tmp_path / "empty")])
    with pytest.raises(DataError, match="unknown builtin"):
        docs_of(tmp_path, ["builtin:nope"])


def test_empty_corpus_is_an_error_with_reasons(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("   \n")
    (tmp_path / "b.txt").write_bytes(b"\xff")
    with pytest.raises(DataError, match=r"corpus is empty.*1 empty, 1 non-utf8"):
        read_corpus(DataConfig(sources=[str(tmp_path / "*.txt")]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode-000 file")
def test_unreadable_file_names_path(tmp_path: Path) -> None:
    p = tmp_path / "secret.txt"
    p.write_text("x")
    p.chmod(0)
    with pytest.raises(DataError, match=r"secret\.txt: cannot read"):
        docs_of(tmp_path, [str(p)])


def test_builtin_stdlib_is_sorted_deterministic_and_capped(tmp_path: Path) -> None:
    files = builtin_stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    cfg = DataConfig(sources=[BUILTIN_STDLIB], max_source_bytes=60_000)
    a, b = read_corpus(cfg), read_corpus(cfg)
    assert a.docs == b.docs and a.fingerprint == b.fingerprint
    assert a.stats.capped and 60_000 <= a.stats.bytes < 60_000 + max(len(d.encode()) for d in a.docs) + 1
    # the cap is honoured: without the last document we are under it
    assert a.stats.bytes - len(a.docs[-1].encode()) < 60_000


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any outside connection fails the test: these paths must not probe the network."""

    def refuse(address, *a, **kw):
        raise AssertionError(f"network probe to {address}")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_hf_source_without_datasets_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `datasets` an hf: source is one clear error, checked with no network (each path has its own test,
    so a test that accepted either message cannot pass whichever path ran)."""
    _no_network(monkeypatch)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError, installed or not
    with pytest.raises(DataError, match=r"^hf:some/dataset: Hugging Face datasets need the `datasets` package"):
        docs_of(tmp_path, ["hf:some/dataset"])


def test_hf_source_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `datasets` is an optional extra that the test venv may lack: an empty module stands for it (nothing of it
    # is called: the offline check comes first)
    _no_network(monkeypatch)
    monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DataError, match=r"^hf:some/dataset: the Hugging Face hub is unreachable: HF_HUB_OFFLINE is set"
    ):
        docs_of(tmp_path, ["hf:some/dataset"])


def test_hf_source_unreachable_endpoint_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real refused connection on 127.0.0.1 (a port just freed), never the internet."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(DataError, match=rf"hub is unreachable: cannot reach 127\.0\.0\.1:{port}"):
        docs_of(tmp_path, ["hf:some/dataset"])


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    fp1 = read_corpus(DataConfig(sources=[str(tmp_path / "a.txt")])).fingerprint
    (tmp_path / "a.txt").write_text("two")
    assert read_corpus(DataConfig(sources=[str(tmp_path / "a.txt")])).fingerprint != fp1


def test_read_error_names_path_and_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same check as above, but also when running as root: the OS error surfaces as a DataError."""
    p = tmp_path / "disk.txt"
    p.write_text("x")

    def broken(self: Path) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "read_bytes", broken)
    with pytest.raises(DataError, match=r"disk\.txt: cannot read: Input/output error"):
        docs_of(tmp_path, [str(p)])


def test_scan_matches_read(tmp_path: Path) -> None:
    from mltrain.data.sources import scan_corpus

    (tmp_path / "a.txt").write_text("short")
    (tmp_path / "b.txt").write_text("ünïcode " * 50)
    cfg = DataConfig(sources=[str(tmp_path / "*.txt")])
    scan, full = scan_corpus(cfg), read_corpus(cfg)
    assert scan.fingerprint == full.fingerprint and scan.docs == len(full.docs) == 2
    assert scan.doc_bytes.tolist() == [len(d.encode()) for d in full.docs]
