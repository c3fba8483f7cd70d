from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import openneuro
import pytest

from modelcycle.data.openneuro import (
    MANIFEST_NAME,
    FetchError,
    FetchRecord,
    copy_mirror,
    fetch_openneuro,
    hash_tree,
    read_manifest,
    write_manifest,
)

#: Files of a small fake dataset: relative path -> content.
DATASET = {
    "dataset_description.json": b'{"Name": "QTIM"}',
    "participants.tsv": b"participant_id\tsex\nsub-01\tF\n",
    "participants.json": b"{}",
    "derivatives/freesurfer_5.3/fs5.3_ses-01.tsv": b"subject\tlh\nsub-01\t1.5\n",
    "derivatives/freesurfer_5.3/extra/notes.txt": b"nested",
    "sub-01/anat/sub-01_T1w.nii.gz": b"\x00" * 4096,
}
INCLUDE = ("participants.tsv", "derivatives/freesurfer_5.3/*")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


class FakeDownload:
    """Stands in for `openneuro.download`: writes the included files, records its kwargs."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files = DATASET if files is None else files
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *, target_dir: Path, include: Iterable[str], **kwargs: Any) -> None:
        self.calls.append({"target_dir": target_dir, "include": include, **kwargs})
        patterns = list(include)
        chosen = {
            rel: data
            for rel, data in self.files.items()
            if any(rel == p or rel.startswith(p.rstrip("*")) for p in patterns)
        }
        _write(Path(target_dir), chosen)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeDownload:
    fake = FakeDownload()
    monkeypatch.setattr(openneuro, "download", fake)
    return fake


def test_arguments_are_passed_to_openneuro(tmp_path: Path, fake: FakeDownload) -> None:
    target = tmp_path / "new" / "ds004169"
    fetch_openneuro("ds004169", target, INCLUDE, tag="1.0.0", exclude=["sub-*"])
    assert target.is_dir()
    assert fake.calls == [
        {
            "dataset": "ds004169",
            "tag": "1.0.0",
            "target_dir": target,
            "include": list(INCLUDE),
            "exclude": ["sub-*"],
        }
    ]


def test_no_exclude_is_passed_as_none(tmp_path: Path, fake: FakeDownload) -> None:
    fetch_openneuro("ds004169", tmp_path, INCLUDE)
    assert fake.calls[0]["exclude"] is None
    assert fake.calls[0]["tag"] is None


def test_manifest_holds_sha256_of_downloaded_files(tmp_path: Path, fake: FakeDownload) -> None:
    record = fetch_openneuro("ds004169", tmp_path, INCLUDE)
    expected = {
        rel: _sha(DATASET[rel])
        for rel in (
            "participants.tsv",
            "derivatives/freesurfer_5.3/fs5.3_ses-01.tsv",
            "derivatives/freesurfer_5.3/extra/notes.txt",
        )
    }
    assert record.files == expected
    assert record.dataset == "ds004169"
    assert record.root == tmp_path
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["files"] == expected
    assert manifest["root"] == str(tmp_path)
    assert manifest["dataset"] == "ds004169"
    assert manifest["tag"] is None
    assert manifest["fetched_at"].endswith("+00:00")


def test_digest_is_stable_and_follows_content(tmp_path: Path, fake: FakeDownload) -> None:
    first = fetch_openneuro("ds004169", tmp_path / "a", INCLUDE)
    second = fetch_openneuro("ds004169", tmp_path / "b", INCLUDE)
    assert first.digest() == second.digest()
    assert len(first.digest()) == 64
    reordered = FetchRecord("x", None, tmp_path, dict(reversed(first.files.items())), "t")
    assert reordered.digest() == first.digest()

    (tmp_path / "b" / "participants.tsv").write_bytes(b"participant_id\nsub-02\n")
    changed = FetchRecord("ds004169", None, tmp_path / "b", hash_tree(tmp_path / "b", INCLUDE), "t")
    assert changed.files["participants.tsv"] == _sha(b"participant_id\nsub-02\n")
    assert changed.digest() != first.digest()


def test_read_manifest_round_trips(tmp_path: Path, fake: FakeDownload) -> None:
    record = fetch_openneuro("ds004169", tmp_path, INCLUDE, tag="1.0.0")
    assert read_manifest(tmp_path) == record


def test_write_then_read_manifest(tmp_path: Path) -> None:
    record = FetchRecord("ds1", "2.0", tmp_path, {"a.txt": _sha(b"a")}, "2026-01-01T00:00:00+00:00")
    assert write_manifest(record) == tmp_path / MANIFEST_NAME
    assert read_manifest(tmp_path) == record


def test_read_manifest_absent_is_none(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None


def test_read_manifest_unreadable_is_none(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json", encoding="utf-8")
    assert read_manifest(tmp_path) is None


def _raise(error: Exception) -> Callable[..., None]:
    def download(**kwargs: Any) -> None:
        raise error

    return download


def test_network_error_names_dataset_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = ConnectionError("Name or service not known.")  # a library's own full stop
    monkeypatch.setattr(openneuro, "download", _raise(error))
    with pytest.raises(FetchError) as info:
        fetch_openneuro("ds004169", tmp_path / "qtim", INCLUDE)
    message = str(info.value)
    assert "Name or service not known. Check" in message  # one full stop, not two
    assert "ds004169" in message
    assert str(tmp_path / "qtim") in message
    assert "Name or service not known" in message
    assert "data.root" in message
    assert "network" in message
    assert info.value.__cause__ is error
    assert not (tmp_path / "qtim" / MANIFEST_NAME).exists()


def test_include_pattern_matching_nothing(tmp_path: Path, fake: FakeDownload) -> None:
    with pytest.raises(FetchError, match=r"derivatives/fsl/\*") as info:
        fetch_openneuro("ds004169", tmp_path, ["participants.tsv", "derivatives/fsl/*"])
    assert "participants.tsv'" not in str(info.value)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_hash_tree_selects_matching_files(tmp_path: Path) -> None:
    _write(tmp_path, DATASET)
    (tmp_path / MANIFEST_NAME).write_text("{}", encoding="utf-8")
    hashes = hash_tree(tmp_path, ["derivatives/freesurfer_5.3/*", "*.json"])
    assert hashes == {
        "dataset_description.json": _sha(DATASET["dataset_description.json"]),
        "participants.json": _sha(DATASET["participants.json"]),
        "derivatives/freesurfer_5.3/extra/notes.txt": _sha(b"nested"),
        "derivatives/freesurfer_5.3/fs5.3_ses-01.tsv": _sha(
            DATASET["derivatives/freesurfer_5.3/fs5.3_ses-01.tsv"]
        ),
    }


def test_hash_tree_directory_pattern_and_exclude(tmp_path: Path) -> None:
    _write(tmp_path, DATASET)
    hashes = hash_tree(tmp_path, ["sub-01", "derivatives"], exclude=["*.txt"])
    assert sorted(hashes) == [
        "derivatives/freesurfer_5.3/fs5.3_ses-01.tsv",
        "sub-01/anat/sub-01_T1w.nii.gz",
    ]


def test_hash_tree_streams_large_files(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000  # 2.5 MB: several 1 MiB chunks
    (tmp_path / "big.bin").write_bytes(data)
    assert hash_tree(tmp_path, ["*.bin"]) == {"big.bin": _sha(data)}


def _openneuro_reachable() -> bool:
    try:
        socket.create_connection(("openneuro.org", 443), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.slow
def test_real_download_without_network_raises_fetch_error(tmp_path: Path) -> None:
    """Calls the real openneuro-py on a machine with no route to openneuro.org.

    openneuro-py retries the metadata request 5 times with back-off (about 16 s offline).
    """
    if _openneuro_reachable():
        pytest.skip("openneuro.org is reachable; this test checks the offline error")
    start = time.monotonic()
    with pytest.raises(FetchError, match="ds004169") as info:
        fetch_openneuro("ds004169", tmp_path / "ds004169", ["participants.json"])
    assert "data.root" in str(info.value)
    assert time.monotonic() - start < 120


def test_copy_mirror_copies_and_records_only_the_included_files(tmp_path: Path) -> None:
    mirror, target = tmp_path / "mirror", tmp_path / "copy"
    _write(mirror, DATASET)
    record = copy_mirror("ds004169", mirror, target, INCLUDE)

    wanted = {k for k in DATASET if k == "participants.tsv" or k.startswith("derivatives/")}
    assert set(record.files) == wanted
    assert record.files == {k: _sha(DATASET[k]) for k in wanted}
    assert all((target / k).read_bytes() == DATASET[k] for k in wanted)
    assert not (target / "sub-01").exists()
    assert record.tag == f"mirror:{mirror.resolve()}"
    assert read_manifest(target) == record
    # same files, same identity as a download would have
    assert record.digest() == FetchRecord("x", None, target, record.files, "t").digest()


def test_copy_mirror_names_a_missing_mirror_and_a_pattern_that_matched_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(FetchError, match=r"absent.*not a directory"):
        copy_mirror("ds004169", tmp_path / "absent", tmp_path / "copy", INCLUDE)
    _write(tmp_path / "mirror", {"participants.tsv": b"x"})
    with pytest.raises(FetchError, match="freesurfer"):
        copy_mirror("ds004169", tmp_path / "mirror", tmp_path / "copy", INCLUDE)
