"""common/config.py: defaults <- YAML <- key=value, with clear errors for unknown keys and wrong types."""
import os
import subprocess

import pytest
import yaml

from common.config import ConfigError, load_config, save_resolved_config

DEFAULTS = {"lr": 1e-6, "epochs": 1, "objective": "clip_refine", "keys": ["title"], "use_ema": False}


def test_file_then_command_line_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-5\nepochs: 3\n")
    cfg = load_config(DEFAULTS, str(path), ["epochs=2", "objective=rafa", "use_ema=true"])
    assert (cfg.lr, cfg.epochs, cfg.objective, cfg.use_ema) == (1e-5, 2, "rafa", True)


def test_config_keys_are_key_value_only():
    for flag in (["--objective", "rafa"], ["--use_ema=true"], ["--use-ema"]):
        with pytest.raises(ConfigError, match=r"is not an option; config keys are given as key=value \((objective|"
                                              r"use_ema)=VALUE\)"):
            load_config(DEFAULTS, None, flag)
    with pytest.raises(ConfigError, match="unknown key 'use-ema'"):  # exactly as in DEFAULTS: snake_case
        load_config(DEFAULTS, None, ["use-ema=true"])


def test_yaml_reads_1e_minus_6_as_a_string_and_it_still_becomes_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-6\n")  # YAML 1.1 makes this the string "1e-6"
    assert load_config(DEFAULTS, str(path), ["lr=3e-5"]).lr == 3e-5
    assert load_config(DEFAULTS, str(path)).lr == 1e-6


def test_unknown_key_names_the_file_and_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'learning_rate'.*epochs, keys, lr"):
        load_config(DEFAULTS, str(path))
    with pytest.raises(ConfigError, match="command line: unknown key 'lrr'"):
        load_config(DEFAULTS, None, ["lrr=1"])


def test_a_misspelt_key_is_answered_with_the_key_it_is_close_to(tmp_path):
    from refine import DEFAULTS as REFINE_DEFAULTS
    path = tmp_path / "c.yaml"
    path.write_text("batch_szie: 512\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'batch_szie'; did you mean 'batch_size'\? Valid keys: "
                                          r"accum_steps, "):
        load_config(REFINE_DEFAULTS, str(path))
    with pytest.raises(ConfigError, match=r"command line: unknown key 'epoch'; did you mean 'epochs'\?"):
        load_config(REFINE_DEFAULTS, None, ["epoch=2"])
    with pytest.raises(ConfigError, match=r"command line: unknown key 'zzz'\. Valid keys: "):  # nothing close
        load_config(REFINE_DEFAULTS, None, ["zzz=1"])


def test_wrong_type_and_malformed_override_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="epochs='many' should be a int"):
        load_config(DEFAULTS, None, ["epochs=many"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(DEFAULTS, None, ["epochs"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(DEFAULTS, str(tmp_path / "nope.yaml"))


def test_resolved_config_is_saved_with_git_sha(tmp_path):
    cfg = load_config(DEFAULTS, None, ["epochs=4"])
    saved = yaml.safe_load(open(save_resolved_config(cfg, str(tmp_path))))
    assert saved["epochs"] == 4 and saved["lr"] == 1e-6
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.dirname(__file__)),
                          capture_output=True, text=True).stdout.strip()
    assert head, "the tests run in a git checkout"
    assert saved["_git_sha"].removesuffix("-dirty") == head


def test_lists_of_names_accept_a_comma_list_and_a_wrong_form_shows_one_that_works():
    import refine

    cfg = load_config(refine.DEFAULTS, None, ["csv_caption_keys=short,long", "wds_caption_keys=[txt, caption]"])
    assert cfg.csv_caption_keys == ["short", "long"] and cfg.wds_caption_keys == ["txt", "caption"]
    assert load_config(refine.DEFAULTS, None, ["csv_caption_keys=title"]).csv_caption_keys == ["title"]
    with pytest.raises(ConfigError, match=r"csv_caption_keys='short, long' should be a list, written \[a,b\]"):
        load_config(refine.DEFAULTS, None, ["csv_caption_keys=short, long"])  # spaces: not read as names
    with pytest.raises(ConfigError, match=r"default \[title\]"):
        load_config(refine.DEFAULTS, None, ["csv_caption_keys=3"])
