"""Azure Blob model sources against Azurite (the real emulator, started by the `azurite` session fixture)."""

from __future__ import annotations

from pathlib import Path

from azure.storage.blob import BlobServiceClient

from tests.support.azurite import ACCOUNT, Azurite


def test_azurite_fixture_round_trips_a_directory(azurite: Azurite, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "sub" / "w.bin").write_bytes(b"\x00\x01" * 1000)

    uri = azurite.upload_dir(tmp_path, "fixture-check", "dir")

    assert uri == f"az://{ACCOUNT}/fixture-check/dir"
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client("fixture-check")
        assert sorted(b.name for b in container.list_blobs()) == ["dir/config.json", "dir/sub/w.bin"]
        assert container.download_blob("dir/sub/w.bin").readall() == b"\x00\x01" * 1000
