"""Weights lookup order, cache, and downloads against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib

import pytest

from cryosamu_cli import weights
from cryosamu_cli.errors import DownloadError, WeightsError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def server(http_server):
    base, routes, _ = http_server
    routes["/model.pt"] = PAYLOAD
    routes["/cut.pt"] = ("cut", PAYLOAD)
    return base


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(folder))
    monkeypatch.delenv(weights.OFFLINE_ENV, raising=False)
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    monkeypatch.setattr(weights, "shipped_weights_dir", lambda: tmp_path / "shipped")
    return folder


def _entry(url, sha=None, size=None, file="model.pt"):
    return weights.WeightsEntry(name="test-model", file=file, url=url,
                                sha256=sha or hashlib.sha256(PAYLOAD).hexdigest(),
                                size=len(PAYLOAD) if size is None else size, config={})


def _manifest(entry):
    return weights.Manifest(entries={entry.name: entry}, default=entry.name)


def test_download_lands_in_the_cache_with_progress(server, cache):
    seen = []
    path = weights.resolve_weights(manifest=_manifest(_entry(f"{server}/model.pt")),
                                   progress=lambda done, total: seen.append((done, total)))
    assert path == cache / "model.pt" and path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert list(cache.iterdir()) == [path]


def test_hash_mismatch_leaves_no_file(server, cache):
    with pytest.raises(DownloadError, match="SHA-256"):
        weights.download_weights(_entry(f"{server}/model.pt", sha="0" * 64))
    assert list(cache.iterdir()) == []


def test_http_404_is_reported(server, cache):
    with pytest.raises(DownloadError, match="HTTP 404"):
        weights.download_weights(_entry(f"{server}/missing.pt"))
    assert list(cache.iterdir()) == []


def test_connection_cut_mid_transfer_leaves_no_file(server, cache):
    with pytest.raises(DownloadError):
        weights.download_weights(_entry(f"{server}/cut.pt"))
    assert list(cache.iterdir()) == []


def test_offline_mode_says_how_to_get_the_file(server, cache, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    with pytest.raises(WeightsError, match="weights download test-model"):
        weights.resolve_weights(manifest=_manifest(_entry(f"{server}/model.pt")))


def test_lookup_order_explicit_then_cache_then_shipped(server, cache, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    manifest = _manifest(_entry(f"{server}/model.pt"))
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "model.pt").write_bytes(PAYLOAD)
    assert weights.resolve_weights(manifest=manifest) == shipped / "model.pt"
    cache.mkdir()
    (cache / "model.pt").write_bytes(PAYLOAD)
    assert weights.resolve_weights(manifest=manifest) == cache / "model.pt"
    explicit = tmp_path / "mine.pt"
    explicit.write_bytes(b"x")
    assert weights.resolve_weights(explicit, manifest=manifest) == explicit


def test_weights_takes_a_manifest_name_where_no_such_file_exists(server, cache, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    manifest = _manifest(_entry(f"{server}/model.pt"))
    other = weights.WeightsEntry(name="other-model", file="other.pt", url="", sha256="0" * 64,
                                 size=3, config={})
    manifest.entries[other.name] = other
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "other.pt").write_bytes(b"abc")
    assert weights.resolve_weights("other-model", manifest=manifest) == shipped / "other.pt"
    (tmp_path / "other-model").write_bytes(b"a file of that name wins")
    assert weights.resolve_weights("other-model", manifest=manifest).name == "other-model"
    with pytest.raises(WeightsError, match="nor a pretrained model's name: other-model, "
                                           "test-model"):
        weights.resolve_weights("no-such-model", manifest=manifest)


def test_a_cached_file_of_the_wrong_size_is_downloaded_again(server, cache):
    cache.mkdir()
    (cache / "model.pt").write_bytes(PAYLOAD[:10])
    path = weights.resolve_weights(manifest=_manifest(_entry(f"{server}/model.pt")))
    assert path.read_bytes() == PAYLOAD


def test_verify_finds_a_corrupt_copy(server, cache):
    entry = _entry(f"{server}/model.pt")
    path = weights.download_weights(entry)
    assert weights.verify_entry(entry) == {str(path): "ok"}
    path.write_bytes(b"\0" * len(PAYLOAD))
    assert weights.verify_entry(entry) == {str(path): "corrupt"}


def test_unwritable_cache_names_the_variable(tmp_path, monkeypatch, server):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(weights.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(DownloadError, match=weights.CACHE_ENV):
        weights.download_weights(_entry(f"{server}/model.pt"))


def test_missing_explicit_weights_and_no_default(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        weights.resolve_weights(tmp_path / "absent.pt")
    with pytest.raises(WeightsError, match="--weights"):
        weights.Manifest(entries={}, default=None).get()


def test_a_mirror_serves_models_without_an_address_and_none_is_a_clear_error(
        server, cache, monkeypatch):
    manifest = _manifest(_entry(""))
    with pytest.raises(WeightsError, match="ship inside the cryosamu package"):
        weights.resolve_weights(manifest=manifest)
    monkeypatch.setenv(weights.MIRROR_ENV, server + "/")
    path = weights.resolve_weights(manifest=manifest)
    assert path == cache / "model.pt" and path.read_bytes() == PAYLOAD


def test_shipped_manifest_is_readable():
    manifest = weights.load_manifest()
    for entry in manifest.entries.values():
        assert len(entry.sha256) == 64 and entry.size > 0


def test_the_default_model_ships_intact_and_loads(monkeypatch, tmp_path):
    from cryosamu_cli.model.config import UNetConfig

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.setenv(weights.OFFLINE_ENV, "1")
    manifest = weights.load_manifest()
    entry = manifest.get()  # a default exists
    path = weights.resolve_weights()
    assert path == weights.shipped_weights_dir() / entry.file
    assert path.stat().st_size == entry.size and weights.sha256_of(path) == entry.sha256
    model = weights.load_model(path)  # weights_only=True inside
    assert model.config == UNetConfig.from_dict(entry.config)


def test_weights_add_ships_a_bare_checkpoint_that_becomes_the_default(
        tiny_checkpoint, tmp_path, monkeypatch):
    import json

    import torch
    from typer.testing import CliRunner

    from cryosamu_cli.cli.app import app

    folder = tmp_path / "shipped"
    folder.mkdir()
    monkeypatch.setattr(weights, "shipped_weights_dir", lambda: folder)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["weights", "add", str(tiny_checkpoint), "--name", "tiny-v1",
                                      "--description", "a tiny test net", "--default"])
    assert result.exit_code == 0, result.output
    manifest = weights.load_manifest()
    entry = manifest.get()
    assert manifest.default == "tiny-v1" and entry.file == "tiny-v1.pt"
    path = weights.resolve_weights()  # found in the shipped folder, checksum and size match
    assert path == folder / "tiny-v1.pt" and weights.sha256_of(path) == entry.sha256
    assert set(torch.load(path, weights_only=True)) == {"format", "config", "state_dict"}
    original, shipped = weights.load_model(tiny_checkpoint), weights.load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(),
                                                 shipped.state_dict().values()))
    assert json.loads((folder / "manifest.json").read_text())["models"]["tiny-v1"]["config"] \
        == original.config.to_dict()
    bad = CliRunner().invoke(app, ["weights", "add", str(tmp_path / "nope.pt"), "--name", "x"])
    assert bad.exit_code == 1 and "Error:" in bad.output
    (folder / "manifest.json").write_text("{not json")
    broken = CliRunner().invoke(app, ["weights", "add", str(tiny_checkpoint), "--name", "y"])
    assert broken.exit_code == 1 and "cannot read weights manifest" in broken.output
    assert not (folder / "y.pt").exists()
    nowhere = CliRunner().invoke(app, ["weights", "add", str(tiny_checkpoint), "--name", "z",
                                       "--folder", str(tmp_path / "missing")])
    assert nowhere.exit_code == 1 and "weights folder not found" in nowhere.output
