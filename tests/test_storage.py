"""Storage over local paths and a real S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import pytest

from curation import storage


def test_s3_round_trip_list_and_missing_key(s3_bucket):
    base = f"s3://{s3_bucket}/photos"
    storage.write_bytes(f"{base}/b.jpg", b"bbb")
    storage.write_bytes(f"{base}/a/x.jpg", b"a")
    listed = list(storage.list_objects(base))
    assert [o.uri for o in listed] == [f"{base}/a/x.jpg", f"{base}/b.jpg"]
    assert [o.size for o in listed] == [1, 3]
    assert storage.read_bytes(f"{base}/b.jpg") == b"bbb"
    assert storage.exists(f"{base}/b.jpg") and not storage.exists(f"{base}/nope.jpg")
    assert storage.prefix_reachable(base)
    with pytest.raises(storage.MissingObject) as info:
        storage.read_bytes(f"{base}/nope.jpg")
    assert info.value.error_class == "missing_input" and "nope.jpg" in str(info.value)
    assert not storage.prefix_reachable("s3://no-such-bucket-here/x")


def test_local_round_trip_and_missing_file(tmp_path):
    target = storage.join(str(tmp_path), "deep", "f.bin")
    storage.write_bytes(target, b"123")
    assert storage.read_bytes(target) == b"123"
    assert [o.uri for o in storage.list_objects(str(tmp_path))] == [target]
    with pytest.raises(storage.MissingObject):
        storage.read_bytes(str(tmp_path / "missing.jpg"))
    with pytest.raises(storage.MissingObject):
        list(storage.list_objects(str(tmp_path / "missing")))


def test_local_file_downloads_s3_objects_and_names_missing_ones(s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/videos/clip.mp4"
    storage.write_bytes(uri, b"\x00\x00\x00\x18ftypmp42")
    path = storage.local_file(uri, tmp_path / "scratch")
    assert path.read_bytes() == b"\x00\x00\x00\x18ftypmp42" and path.parent == tmp_path / "scratch"
    with pytest.raises(storage.MissingObject) as info:
        storage.local_file(f"s3://{s3_bucket}/videos/none.mp4", tmp_path / "scratch")
    assert "none.mp4" in str(info.value)
    local = tmp_path / "here.mp4"
    local.write_bytes(b"x")
    assert storage.local_file(str(local), tmp_path / "scratch") == local
    with pytest.raises(storage.MissingObject):
        storage.local_file(str(tmp_path / "gone.mp4"), tmp_path / "scratch")
