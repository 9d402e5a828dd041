"""The zoo manifest, offline behaviour, ``resolve_model`` on every kind of spec, and ``efficientsam3 models``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from efficientsam3_ros.commands.models import add_arguments as add_models_arguments
from efficientsam3_ros.commands.models import run as run_models
from efficientsam3_ros.modeling.checkpoint import save_checkpoint
from efficientsam3_ros.modeling.checkpoint_files import CheckpointError
from efficientsam3_ros.modeling.registry import build_model, list_models
from efficientsam3_ros.zoo import ZooEntry, ZooError, load_zoo, manual_path, resolve_model
from efficientsam3_ros.zoo.download import check_sha256, sha256_file

STAGE1 = {
    f"es-{f}-{s}": f"stage1_all_converted/efficient_sam3_{fam}_{s}.pt"
    for f, fam in (("rv", "repvit"), ("tv", "tinyvit"), ("ev", "efficientvit"))
    for s in "sml"
}


def digest_entry(content: bytes, hub_file: str, fmt: str) -> ZooEntry:
    """A hub entry whose zoo record holds ``content``'s sha256 (the download tests' subject)."""
    import hashlib

    return ZooEntry(
        name="x",
        format=fmt,
        hub_repo="o/r",
        hub_file=hub_file,
        architecture="es-ev-tiny",
        sha256=hashlib.sha256(content).hexdigest(),
    )


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_manifest_lists_every_released_model() -> None:
    zoo = load_zoo()
    for name, file in STAGE1.items():
        entry = zoo[name]
        assert (entry.hub_repo, entry.hub_file, entry.format) == (
            "Simon7108528/EfficientSAM3",
            file,
            "original",
        )
        assert entry.architecture in list_models() and "SAM Licence" in entry.license
    assert zoo["sam3"].hub_repo == "facebook/sam3" and zoo["sam3"].gated and "Meta" in zoo["sam3"].license
    for size in ("s0", "s1", "l"):
        assert zoo[f"sam3-litetext-{size}"].format == "hf"


def _write_zoo(tmp_path: Path, entries: dict) -> Path:
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


def test_manifest_rejects_bad_entries(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="format"):
        load_zoo(_write_zoo(tmp_path, {"x": {"format": "zip", "source": {"hub": "a/b", "file": "f"}}}))
    with pytest.raises(ZooError, match="sha256"):
        load_zoo(
            _write_zoo(
                tmp_path,
                {
                    "x": {
                        "format": "original",
                        "architecture": "es-ev-s",
                        "source": {"hub": "a/b", "file": "f"},
                        "sha256": "12",
                    }
                },
            )
        )


@pytest.fixture()
def local_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A zoo with one hub entry whose file is placed by hand (no network is ever needed)."""
    entries = {
        "tiny-hub": {
            "format": "efficientsam3_ros",
            "architecture": "es-ev-tiny",
            "source": {"hub": "nobody/none", "file": "weights/tiny.safetensors"},
        }
    }
    monkeypatch.setenv("EFFICIENTSAM3_ZOO", str(_write_zoo(tmp_path, entries)))
    monkeypatch.setenv("EFFICIENTSAM3_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_zoo_name_uses_hand_placed_copy(local_zoo: Path) -> None:
    entry = load_zoo()["tiny-hub"]
    placed = manual_path(entry)
    assert placed == local_zoo / "home" / "models" / "tiny-hub" / "tiny.safetensors"
    reference = build_model("es-ev-tiny")
    save_checkpoint(reference, placed, sidecar=False)
    model = resolve_model("tiny-hub")
    _same_weights(model, reference)
    assert model.config.name == "tiny-hub"


def test_offline_download_is_one_clear_line(tmp_path: Path) -> None:
    """The real huggingface_hub path, offline: exit 2 and one line naming where to put the file."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "EFFICIENTSAM3_HOME": str(tmp_path / "home"),
    }
    argv = [sys.executable, "-m", "efficientsam3_ros.cli", "models", "download", "es-ev-s"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    expected = tmp_path / "home" / "models" / "es-ev-s" / "efficient_sam3_efficientvit_s.pt"
    assert "cannot download es-ev-s" in lines[0] and str(expected) in lines[0]


def test_resolve_own_file_and_refuse_unnamed_file(tmp_path: Path) -> None:
    reference = build_model("es-rv-tiny")
    path = save_checkpoint(reference, tmp_path / "mine.safetensors", sidecar=False)
    _same_weights(resolve_model(str(path)), reference)
    _same_weights(resolve_model("es-rv-tiny", str(path)), reference)
    bare = tmp_path / "bare.pt"
    torch.save({"model": {"detector.x": torch.zeros(1)}}, bare)
    with pytest.raises(CheckpointError, match="--model"):
        resolve_model(str(bare))
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model("no-such-model")


def test_resolve_hf_directory(tmp_path: Path) -> None:
    """An HF-format SAM3 directory (config.json + model.safetensors, transformers' names) loads by name."""
    reference = build_model("sam3-tiny")
    reference.detector.save_pretrained(tmp_path / "hf")
    model = resolve_model(str(tmp_path / "hf"))
    assert model.config.vit["num_hidden_layers"] == reference.config.vit["num_hidden_layers"]
    _same_weights(model.detector, reference.detector)


def test_sha256_check(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"efficientsam3")
    check_sha256(path, sha256_file(path))
    with pytest.raises(ZooError, match="does not match"):
        check_sha256(path, "0" * 64)


def _models(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_models_arguments(parser)
    return run_models(parser.parse_args(list(argv)))


def test_models_cli_list_info_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from efficientsam3_ros.cli import CliError

    assert _models("--tiny") == 0
    assert "es-ev-tiny" in capsys.readouterr().out
    assert _models("info", "es-ev-s") == 0
    out = capsys.readouterr().out
    assert "efficient_sam3_efficientvit_s.pt" in out and "place by hand at" in out
    path = save_checkpoint(build_model("es-tv-tiny"), tmp_path / "tv.safetensors")
    assert _models("verify", str(path)) == 0
    assert "OK: the checkpoint fills every parameter and buffer" in capsys.readouterr().out
    assert _models("verify", str(path), "--model", "es-ev-tiny") == 1  # wrong architecture: names listed
    assert "missing model entries" in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CliError, match="truncated"):
        _models("verify", str(path))


def test_shipped_path_finds_the_source_tree_then_an_installed_share_copy(tmp_path, monkeypatch):
    from efficientsam3_ros.zoo.manifest import shipped_path

    repo_models = Path(__file__).resolve().parents[1] / "models"
    assert shipped_path("zoo.yaml") == repo_models / "zoo.yaml"
    name = "only-in-share-7f3a"
    assert shipped_path(name) == repo_models / name  # nowhere: the source-tree path, for the error message
    share = tmp_path / "install" / "share" / "efficientsam3_ros" / "models" / name
    share.mkdir(parents=True)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "install"))  # what a sourced colcon workspace sets
    assert shipped_path(name) == share


def test_a_cached_file_is_checked_against_the_zoo_digest_each_time_it_is_handed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only right after its download: a copy in the cache may be replaced or damaged later. A
    pass is remembered by size and mtime, so an unchanged file is hashed once."""
    import importlib

    dl = importlib.import_module("efficientsam3_ros.zoo.download")  # the package re-exports download()

    monkeypatch.setenv("EFFICIENTSAM3_HOME", str(tmp_path / "home"))
    cached = tmp_path / "hub" / "w.safetensors"
    cached.parent.mkdir()
    served = {"bytes": b"corrupted download"}

    def fake_fetch(entry: ZooEntry, local_only: bool) -> Path:  # huggingface_hub and its cache
        if not local_only:
            cached.write_bytes(served["bytes"])
        if not cached.exists():
            raise FileNotFoundError("not cached")
        return cached

    hashed: list[Path] = []

    def counting_sha256(path: str | Path) -> str:
        hashed.append(Path(path))
        return sha256_file(path)

    monkeypatch.setattr(dl, "_hub_fetch", fake_fetch)
    monkeypatch.setattr(dl, "_check_hub_reachable", lambda: None)  # the fake hub needs no network
    monkeypatch.setattr(dl, "sha256_file", counting_sha256)
    good = b"the real weights"
    entry = digest_entry(good, "w.safetensors", "efficientsam3_ros")
    with pytest.raises(ZooError, match="does not match"):
        dl.download(entry)  # the download itself is checked
    with pytest.raises(ZooError, match="does not match"):
        dl.download(entry)  # and so is the same bad file, now found in the cache
    cached.write_bytes(good)
    hashed.clear()
    assert dl.download(entry) == cached
    assert dl.download(entry) == cached
    assert len(hashed) == 1  # the pass is remembered: an unchanged file is not hashed again
    cached.write_bytes(b"changed on disk")  # another size (and mtime): checked again
    with pytest.raises(ZooError, match="does not match"):
        dl.download(entry)


def test_a_name_with_a_checkpoint_runs_at_the_input_size_the_file_records():
    """demo-student's registry size is 168 px without a box-scoring head; the shipped file records 336
    and its head, which it runs with unless input_size says otherwise (before: 168, silently)."""
    from efficientsam3_ros.commands.demo import demo_dir
    from efficientsam3_ros.zoo.resolve import resolve_model

    weights = str(demo_dir() / "model.safetensors")
    named = resolve_model("demo-student", weights).config
    assert named.image_size == 336 and named.box_scoring  # the file's size and head
    assert resolve_model("demo-student", weights, input_size=168).config.image_size == 168


def test_a_typo_in_a_zoo_entry_is_refused_not_ignored(tmp_path: Path) -> None:
    """A misspelt key (``sha_256``, ``source.flie``) used to be dropped silently: the entry then
    had no digest to check, or no file to fetch, and nothing said so."""
    base = {"format": "original", "architecture": "es-ev-s", "source": {"hub": "a/b", "file": "f.pt"}}
    with pytest.raises(ZooError, match="sha_256"):
        load_zoo(_write_zoo(tmp_path, {"x": {**base, "sha_256": "0" * 64}}))
    with pytest.raises(ZooError, match="flie"):
        load_zoo(_write_zoo(tmp_path, {"x": {**base, "source": {"hub": "a/b", "flie": "f.pt"}}}))
    with pytest.raises(ZooError, match="mapping"):
        load_zoo(_write_zoo(tmp_path, {"x": {**base, "source": "a/b"}}))
    assert load_zoo(_write_zoo(tmp_path, {"x": base}))["x"].hub_file == "f.pt"
    with pytest.raises(ZooError, match="gated must be true or false"):  # bool("false") is True
        load_zoo(_write_zoo(tmp_path, {"x": {**base, "gated": "false"}}))
    assert load_zoo(_write_zoo(tmp_path, {"x": {**base, "gated": True}}))["x"].gated is True


def test_a_damaged_safetensors_index_names_its_file(tmp_path: Path) -> None:
    from efficientsam3_ros.modeling.checkpoint_files import open_hf_directory

    index = tmp_path / "model.safetensors.index.json"
    for text in ("{not json", '{"metadata": {}}', '{"weight_map": [1, 2]}'):
        index.write_text(text)
        with pytest.raises(CheckpointError, match="model.safetensors.index.json: not a safetensors index"):
            open_hf_directory(tmp_path)


def test_every_shipped_zoo_entry_names_a_buildable_architecture() -> None:
    """A typo in models/zoo.yaml's architecture or overrides is caught here, not by a user's first run."""
    from efficientsam3_ros.zoo.resolve import entry_config

    for entry in load_zoo().values():
        if entry.format == "hf":
            assert entry.architecture is None and entry.hub_file is None, entry.name
            continue
        assert entry.architecture in list_models(), entry.name
        assert entry_config(entry, Path(entry.file_name)).name == entry.name


def test_a_checkpoint_or_home_given_with_a_tilde_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``~`` reaches the package unexpanded from ROS parameter files, launch files and
    ``--checkpoint=~/...`` (the shell expands a tilde only at the start of a word)."""
    from efficientsam3_ros.zoo import models_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("EFFICIENTSAM3_HOME", "~/es3")
    assert models_dir() == tmp_path / "es3" / "models"
    reference = build_model("es-ev-tiny")
    save_checkpoint(reference, tmp_path / "w.safetensors", sidecar=False)
    _same_weights(resolve_model("es-ev-tiny", "~/w.safetensors"), reference)


def test_a_relative_local_source_is_read_beside_its_zoo_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``source.local: weights/x.safetensors`` in ``$EFFICIENTSAM3_ZOO`` means beside that file,
    wherever the command runs (it used to be read from the current directory)."""
    from efficientsam3_ros.zoo import find_local

    zoo_dir = tmp_path / "zoo"
    (zoo_dir / "weights").mkdir(parents=True)
    reference = build_model("es-ev-tiny")
    weights = save_checkpoint(reference, zoo_dir / "weights" / "x.safetensors", sidecar=False)
    entry = {
        "format": "efficientsam3_ros",
        "architecture": "es-ev-tiny",
        "source": {"local": "weights/x.safetensors"},
    }
    monkeypatch.setenv("EFFICIENTSAM3_ZOO", str(_write_zoo(zoo_dir, {"rel": entry})))
    monkeypatch.chdir(tmp_path)
    assert find_local(load_zoo()["rel"]) == weights
    _same_weights(resolve_model("rel"), reference)


def test_a_bad_copy_in_the_hf_cache_names_the_file_to_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HF cache hands out a symlink into ``blobs/``; deleting the link does not help (the
    next download re-links the same blob), so the error names the blob itself."""

    from huggingface_hub import constants

    from efficientsam3_ros.zoo import download

    commit = "a" * 40
    repo = tmp_path / "hub" / "models--o--r"
    blob = repo / "blobs" / "etag123"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"damaged")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    link = repo / "snapshots" / commit / "w.pt"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("EFFICIENTSAM3_HOME", str(tmp_path / "home"))
    entry = digest_entry(b"good", "w.pt", "original")
    with pytest.raises(ZooError, match="does not match") as info:
        download(entry)
    assert f"delete {blob} " in str(info.value)


def _hub_at(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Point huggingface_hub at ``endpoint`` with no proxy and a fake ``hf_hub_download`` that
    records its calls and finds nothing in the cache; returns the call list."""
    import huggingface_hub

    calls: list[str] = []

    def hub_download(*args, **kwargs):
        calls.append("hf_hub_download")
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setenv("EFFICIENTSAM3_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    return calls


def test_download_with_no_name_resolution_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, huggingface_hub retried the request 5 times with backoff (40 s, ten lines of
    warnings) before the one-line error; a host that does not resolve now fails at once."""
    import socket

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    calls = _hub_at("https://huggingface.co", tmp_path, monkeypatch)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    from efficientsam3_ros.zoo import download, get_entry

    with pytest.raises(ZooError, match="cannot download es-ev-s .*huggingface.co does not resolve"):
        download(get_entry("es-ev-s"))
    assert calls == ["hf_hub_download"]  # only the cache lookup; no network attempt with retries


def test_download_from_a_host_that_resolves_but_does_not_answer_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A robot's network without an uplink resolves names locally (or a firewall drops the
    packets): the name check passed and huggingface_hub retried for 40 s. A refused connection
    on a real closed port now fails before any download attempt."""
    import socket

    from efficientsam3_ros.zoo import download, get_entry

    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    calls = _hub_at(f"http://127.0.0.1:{port}", tmp_path, monkeypatch)
    with pytest.raises(ZooError, match=f"127.0.0.1:{port} resolves but cannot be reached") as info:
        download(get_entry("es-ev-s"))
    assert f"from 127.0.0.1:{port}/Simon7108528/" in str(info.value)  # the mirror asked, not huggingface.co
    assert calls == ["hf_hub_download"]  # only the cache lookup


def test_download_goes_ahead_when_the_hub_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check must not stop a download from a host that accepts connections (a mirror)."""
    import socket

    from efficientsam3_ros.zoo import download, get_entry

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        calls = _hub_at(f"http://127.0.0.1:{server.getsockname()[1]}", tmp_path, monkeypatch)
        with pytest.raises(ZooError, match="not cached"):
            download(get_entry("es-ev-s"))
    assert calls == ["hf_hub_download", "hf_hub_download"]  # the cache lookup, then the download


def test_a_same_size_rewrite_with_its_old_mtime_is_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cp -p`` / ``rsync -a`` of a damaged copy keeps size and mtime; the ledger also keys on the
    change time, which no copy tool can set, so the file is hashed again and refused."""
    import importlib
    import time

    dl = importlib.import_module("efficientsam3_ros.zoo.download")
    monkeypatch.setenv("EFFICIENTSAM3_HOME", str(tmp_path / "home"))
    good = b"the real weights"
    entry = digest_entry(good, "w.pt", "original")
    placed = manual_path(entry)
    placed.parent.mkdir(parents=True)
    placed.write_bytes(good)
    assert dl.download(entry) == placed
    before = placed.stat()
    time.sleep(0.05)  # a later change time (the kernel stamps it from a clock of a few ms)
    placed.write_bytes(b"the bad weights!")  # same length
    os.utime(placed, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert placed.stat().st_size == before.st_size
    with pytest.raises(ZooError, match="does not match"):
        dl.download(entry)


def test_models_download_does_not_hash_a_verified_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`download` already checked the digest (or remembered a pass); the CLI hashed the whole
    multi-GB file once more on every call just to print it."""
    import hashlib
    import importlib

    import efficientsam3_ros.zoo as zoo_pkg

    dl = importlib.import_module("efficientsam3_ros.zoo.download")
    good = b"the real weights"
    digest = hashlib.sha256(good).hexdigest()
    entries = {
        "x": {
            "format": "original",
            "architecture": "es-ev-tiny",
            "source": {"hub": "o/r", "file": "w.pt"},
            "sha256": digest,
        }
    }
    monkeypatch.setenv("EFFICIENTSAM3_ZOO", str(_write_zoo(tmp_path, entries)))
    monkeypatch.setenv("EFFICIENTSAM3_HOME", str(tmp_path / "home"))
    placed = manual_path(load_zoo()["x"])
    placed.parent.mkdir(parents=True)
    placed.write_bytes(good)
    hashed: list[Path] = []

    def counting_sha256(path: str | Path) -> str:
        hashed.append(Path(path))
        return sha256_file(path)

    monkeypatch.setattr(dl, "sha256_file", counting_sha256)
    monkeypatch.setattr(zoo_pkg, "sha256_file", counting_sha256)
    assert _models("download", "x") == 0
    assert _models("download", "x") == 0
    assert len(hashed) == 1
    assert f"sha256 {digest} (matches the zoo)" in capsys.readouterr().out
