"""Bad values for SSVMR's synthetic conditions: spec, writer, DataModule, CLI and config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datamodules.errors import DataError
from datamodules.mvd import MVDDataModule
from datamodules.synthetic.ensure import MARKER
from datamodules.synthetic.mvd import mvd_settings, write_mvd
from datamodules.synthetic.planted import PlantedSpec
from lightning_app.cli import main
from lightning_app.config import load_config
from lightning_app.errors import ConfigError

SMALL = {"pairs": 60, "val": 10, "test": 10, "styles": 4, "music_frames": 6, "video_frames": 8,
         "seed": 3, "noise": 0.2}


def _mvd_spec(**kwargs) -> PlantedSpec:
    return PlantedSpec(**mvd_settings({**SMALL, **kwargs}))


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"filler": "grey"}, "filler='grey' must be one of same, background"),
    ({"min_frames": 9}, "min_frames=9 must be in [0, video_frames=8]"),
    ({"min_frames": -1}, "min_frames=-1 must be in [0, video_frames=8]"),
])
def test_spec_rejects_bad_conditions(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PlantedSpec(**{**SMALL, **kwargs})


@pytest.mark.parametrize(("pool", "message"), [
    ({"unpaired_videos": -2}, "unpaired_videos=-2 must be an integer >= 0"),
    ({"unpaired_music": 1.5}, "unpaired_music=1.5 must be an integer >= 0"),
    ({"unpaired_linked": 1.5}, "unpaired_linked=1.5 must be in [0, 1]"),
])
def test_writer_and_datamodule_reject_bad_pools(tmp_path: Path, pool, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        write_mvd(_mvd_spec(), tmp_path / "w", progress=False, **pool)
    with pytest.raises(DataError) as e:
        MVDDataModule(tmp_path / "dm", synthetic={**SMALL, **pool}).prepare_data()
    assert str(e.value) == f"data.synthetic: {message}"
    assert not (tmp_path / "w").exists() and not (tmp_path / "dm").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--min-frames", "13"], "vmr synth: min_frames=13 must be in [0, video_frames=12]"),
    (["--unpaired-videos", "-1"], "vmr synth: unpaired_videos=-1 must be an integer >= 0"),
    (["--unpaired-linked", "2"], "vmr synth: unpaired_linked=2.0 must be in [0, 1]"),
])
def test_cli_rejects_bad_values(tmp_path: Path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["synth", "--dataset", "mvd", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vmr: error: {message}") and "\n" not in err
    assert not out.exists()


def test_cli_rejects_conditions_a_format_cannot_hold(tmp_path: Path, capsys):
    out = str(tmp_path / "out")
    assert main(["synth", "--dataset", "himv200k", "--out", out, "--unpaired-music", "3"]) == 2
    assert "need --dataset mvd" in capsys.readouterr().err
    assert main(["synth", "--dataset", "youtube8m", "--out", out, "--min-frames", "3"]) == 2
    assert "--min-frames is not supported for youtube8m" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["synth", "--dataset", "mvd", "--out", out, "--filler", "grey"])
    assert e.value.code == 2 and "invalid choice: 'grey'" in capsys.readouterr().err


def test_cli_writes_the_conditions(tmp_path: Path):
    out = tmp_path / "out"
    assert main(["synth", "--dataset", "mvd", "--out", str(out), "--pairs", "40", "--val", "5",
                 "--test", "5", "--frames", "6", "--min-frames", "2", "--filler", "background",
                 "--unpaired-videos", "4", "--unpaired-music", "6", "--seed", "1"]) == 0
    settings = json.loads((out / MARKER).read_text())
    assert settings["filler"] == "background" and settings["min_frames"] == 2
    assert (settings["unpaired_videos"], settings["unpaired_music"]) == (4, 6)
    assert len((out / "splits" / "unpaired_music.csv").read_text().split()) == 7  # header + 6


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.synthetic.filler=grey"],
     "config: 'data.synthetic.filler' has unknown value 'grey' (choose from: same, background)"),
    (["data.synthetic.min_frames=30"],
     "config: 'data.synthetic.min_frames' must be in [0, data.synthetic.frames = 24]"),
    (["data.synthetic.unpaired_videos=-1"],
     "config: 'data.synthetic.unpaired_videos' must be >= 0 (got -1)"),
    (["data.synthetic.unpaired_linked=1.5"],
     "config: 'data.synthetic.unpaired_linked' must be in [0, 1] (got 1.5)"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("ssvmr_synthetic", overrides)
    assert str(e.value).startswith(message)


def test_config_rejects_a_pool_outside_mvd_and_maps_keys():
    with pytest.raises(ConfigError, match="'data.synthetic.unpaired_music' must be 0 for "
                                          "data.dataset=himv200k"):
        load_config("quickstart", ["data.synthetic.unpaired_music=5"])
    load_config("quickstart", ["data.synthetic.unpaired_music=5",
                               "data.synthetic.enabled=false"])  # not synthesising: no matter
    from lightning_app.registry import build_datamodule

    cfg = load_config("ssvmr_synthetic", ["data.synthetic.filler=background",
                                          "data.synthetic.min_frames=8",
                                          "data.synthetic.unpaired_videos=50"])
    synthetic = build_datamodule(cfg).synthetic
    assert synthetic["filler"] == "background" and synthetic["min_frames"] == 8
    assert synthetic["unpaired_videos"] == 50 and synthetic["unpaired_music"] == 0
