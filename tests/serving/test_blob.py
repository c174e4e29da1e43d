"""Azure Blob model sources against Azurite (the real emulator, started by the `azurite` session fixture).

The download tests talk to Azurite through `azure-storage-blob` as a replica would; the live test serves
the tiny model and its LoRA adapter from `az://` URIs with a real Ray Serve + vLLM.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
from openai import OpenAI

from tests.serving.conftest import ADAPTER, API_KEYS, MODEL_ID
from tests.support.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from tests.support.entra import EntraEmulator, write_pems
from tokenplane_serving.blob import BlobSourceError, download
from tokenplane_serving.blob_uri import BLOB_CREDENTIAL_ENV, BlobLocation, local_dir_for, parse_blob_uri
from tokenplane_serving.local import LocalServer


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


# --- URI forms -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("az://acct/models/llama/8b", BlobLocation("acct", "models", "llama/8b")),
        ("az://acct/models", BlobLocation("acct", "models", "")),
        ("az://acct/models//llama/./8b/", BlobLocation("acct", "models", "llama/8b")),
        ("abfss://models@acct.dfs.core.windows.net/llama", BlobLocation("acct", "models", "llama")),
        ("https://acct.blob.core.windows.net/models/llama", BlobLocation("acct", "models", "llama")),
        (
            "https://acct.blob.core.chinacloudapi.cn/models/llama",
            BlobLocation("acct", "models", "llama", "core.chinacloudapi.cn"),
        ),
    ],
)
def test_blob_uri_forms(uri: str, expected: BlobLocation) -> None:
    assert parse_blob_uri(uri) == expected


def test_account_url_and_local_directory() -> None:
    location = parse_blob_uri("abfss://models@acct.dfs.core.usgovcloudapi.net/llama/8b")
    assert location.account_url == "https://acct.blob.core.usgovcloudapi.net"
    assert local_dir_for(location, "/models/blob") == "/models/blob/acct/models/llama/8b"
    assert str(location) == "az://acct/models/llama/8b"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("az://ab/models/x", "account: 3-24 lowercase"),  # account too short
        ("az://Acct/models/x", "invalid Azure Blob source"),
        ("az://acct/mo/x", "container: 3-63"),
        ("az://acct/my--models/x", "invalid Azure Blob source"),  # no double hyphens
        ("abfss://models@acct.blob.core.windows.net/x", "invalid Azure Blob source"),  # abfss is the dfs host
        ("https://acct.blob.example.com/models/x", "invalid Azure Blob source"),
        ("az://acct/models/a/../../b", "may not contain '..'"),
        ("s3://bucket/x", "is not an Azure Blob URI"),
    ],
)
def test_invalid_blob_uris_say_what_is_accepted(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_blob_uri(uri)


# --- downloads against Azurite ---------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".tokenplane")
    }


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    (source / "nested").mkdir(parents=True)
    (source / "config.json").write_text('{"model_type": "llama"}')
    (source / "model-00001.safetensors").write_bytes(os.urandom(300_000))
    (source / "nested" / "tokenizer.json").write_text("{}")
    return source


def test_download_mirrors_a_directory_and_skips_unchanged_files(
    azurite: Azurite, source_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BLOB_CREDENTIAL_ENV, azurite.connection_string)
    uri = azurite.upload_dir(source_dir, "mirror", "llama")
    dest = tmp_path / "cache" / "llama"

    first = download(uri, dest)
    assert _tree(dest) == _tree(source_dir)
    assert (first.files, first.skipped_files) == (3, 0)
    assert first.downloaded_bytes == sum(len(b) for b in _tree(source_dir).values())

    again = download(uri, dest)
    assert (again.files, again.skipped_files, again.downloaded_bytes) == (3, 3, 0)

    # A re-sharded checkpoint: one file changes, one disappears; the mirror follows, stale shards go.
    (source_dir / "config.json").write_text('{"model_type": "llama", "v": 2}')
    (source_dir / "model-00001.safetensors").unlink()
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        container = service.get_container_client("mirror")
        container.delete_blob("llama/model-00001.safetensors")
        container.upload_blob("llama/config.json", (source_dir / "config.json").read_bytes(), overwrite=True)
    changed = download(uri, dest)
    assert _tree(dest) == _tree(source_dir)
    assert (changed.files, changed.skipped_files) == (2, 1)
    assert changed.downloaded_bytes == len('{"model_type": "llama", "v": 2}')


def test_download_with_a_container_sas_in_a_connection_string(
    azurite: Azurite, source_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = azurite.upload_dir(source_dir, "sas", "llama")
    expiry = datetime.now(UTC) + timedelta(hours=1)
    read_list = generate_container_sas(
        ACCOUNT, "sas", account_key=ACCOUNT_KEY, permission=ContainerSasPermissions(read=True, list=True), expiry=expiry
    )
    monkeypatch.setenv(BLOB_CREDENTIAL_ENV, f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={read_list}")
    download(uri, tmp_path / "ok")
    assert _tree(tmp_path / "ok") == _tree(source_dir)

    read_only = generate_container_sas(
        ACCOUNT, "sas", account_key=ACCOUNT_KEY, permission=ContainerSasPermissions(read=True), expiry=expiry
    )
    monkeypatch.setenv(BLOB_CREDENTIAL_ENV, f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={read_only}")
    with pytest.raises(BlobSourceError, match=r"access denied \(403 .*Storage Blob Data Reader"):
        download(uri, tmp_path / "denied")


@pytest.mark.parametrize(
    ("uri", "credential", "message"),
    [
        (f"az://{ACCOUNT}/no-such-container/x", "", "container 'no-such-container' not found"),
        (f"az://{ACCOUNT}/errors/empty", "", "no blobs under this path"),
        (f"az://{ACCOUNT}/errors/x", "wrong-key", r"access denied \(403"),
        ("az://otheraccount/errors/x", "", "is for account 'devstoreaccount1'"),
    ],
)
def test_download_errors_name_the_source_and_the_fix(
    azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uri: str, credential: str, message: str
) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "f").write_text("x")
    azurite.upload_dir(tmp_path / "one", "errors", "present")
    connection = azurite.connection_string
    if credential == "wrong-key":
        connection = connection.replace(ACCOUNT_KEY, "d3Jvbmcta2V5" * 7 + "AA==")
    monkeypatch.setenv(BLOB_CREDENTIAL_ENV, connection)
    with pytest.raises(BlobSourceError, match=message) as raised:
        download(uri, tmp_path / "dest")
    assert str(raised.value).startswith("az://")


def test_download_as_the_pods_workload_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No secret: DefaultAzureCredential trades the projected token at Entra ID and reads Azurite with a bearer token.

    The environment is what the AKS workload-identity webhook injects into a pod labelled
    `azure.workload.identity/use: "true"`; bearer tokens need TLS, so Azurite serves HTTPS with OAuth on.
    """
    ca = trustme.CA()
    ca_pem, cert, key = write_pems(ca, tmp_path)
    tenant, client_id, projected = (
        "72f988bf-86f1-41af-91ab-2d7cd011db47",
        "0f0e0d0c-1111-2222-3333-444455556666",
        "sa-token",
    )
    (tmp_path / "token").write_text(projected)
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text('{"model_type": "llama"}')
    entra = EntraEmulator(ca, tenant, client_id, projected).start()
    try:
        with Azurite(tmp_path / "azurite", cert=cert, key=key) as secure:
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_pem))  # the SDKs' requests transport trusts the CA
            uri = secure.upload_dir(source, "identity", "llama")  # as the uploader, with the account key
            for name, value in {
                "AZURE_TENANT_ID": tenant,
                "AZURE_CLIENT_ID": client_id,
                "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "token"),
                "AZURE_AUTHORITY_HOST": entra.authority_host,
                # Endpoint only, no secret: Azurite's address; the identity is the pod's.
                BLOB_CREDENTIAL_ENV: f"BlobEndpoint={secure.blob_endpoint};",
            }.items():
                monkeypatch.setenv(name, value)
            download(uri, tmp_path / "dest")
    finally:
        entra.stop()
    assert _tree(tmp_path / "dest") == _tree(source)
    assert [(r["client_id"], r["client_assertion"], r["scope"]) for r in entra.requests] == [
        (client_id, projected, "https://storage.azure.com/.default")
    ]


# --- live: the shared server's model and adapter come from az:// -----------------------------------------------


@pytest.mark.serving
def test_serves_model_and_adapter_from_azure_blob(
    tiny_server: LocalServer, blob_download_dir: Path, tiny_model_dir: Path, tiny_lora_dir: Path
) -> None:
    # conftest's shared server names its model and `sql` adapter by az:// URIs in Azurite (tiny_serving_args).
    client = OpenAI(base_url=tiny_server.openai_base_url, api_key=API_KEYS[0], max_retries=0, timeout=60)
    prompt = "The quick brown fox"

    base = client.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0)
    tuned = client.completions.create(model=f"{MODEL_ID}:{ADAPTER}", prompt=prompt, max_tokens=12, temperature=0)

    assert base.choices[0].text and tuned.choices[0].text
    # The adapter's weights reached vLLM: greedy output differs from the base model's.
    assert tuned.choices[0].text != base.choices[0].text
    # What vLLM read is what was uploaded, byte for byte, in the deterministic download directories.
    assert _tree(blob_download_dir / ACCOUNT / "served" / MODEL_ID) == _tree(tiny_model_dir)
    assert _tree(blob_download_dir / ACCOUNT / "served" / "adapters" / ADAPTER) == _tree(tiny_lora_dir)
