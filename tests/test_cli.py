import json
import subprocess
import sys

import pytest

from align.cli import BuildArgs, main
from align.config import ConfigError, check_config, parse_config


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("quickstart", "testbed build", "testbed info", "train", "generate", "eval", "report", "reproduce NAME"):
        assert command in out


def test_eval_and_report_name_what_is_missing(capsys, tmp_path):
    code, _, err = run(capsys, "eval", "--config", str(tmp_path / "x.yaml"))
    assert code == 2 and "x.yaml" in err
    code, _, err = run(capsys, "report")
    assert code == 2 and "runs: give at least one run directory" in err


def test_train_without_a_trainer_lists_them(capsys):
    code, _, err = run(capsys, "train", "--config", "x.yaml")
    assert code == 2 and "unknown command 'train --config'" in err
    assert "train score" in err and "train refusal" in err


def test_unknown_command(capsys):
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "unknown command 'frobnicate'" in err


def test_python_dash_m_align():
    out = subprocess.run([sys.executable, "-m", "align", "--help"], capture_output=True, text=True, check=True)
    assert "testbed build" in out.stdout


def test_yaml_then_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("profile: tiny\nseed: 3\nworkers: 1\n")
    args = parse_config(BuildArgs, ["--config", str(cfg), "--seed", "5"])
    assert (args.profile, args.seed, args.workers) == ("tiny", 5, 1)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("profil: tiny\n", "unknown key 'profil'"),
        ("seed: three\n", "key 'seed' must be int, got 'three'"),
        ("seed: 1.5\n", "key 'seed' must be int"),
        ("profile: huge\n", "key 'profile' must be one of 'full', 'tiny'"),
        ("force: 'yes'\n", "key 'force' must be bool"),
        ("- a\n- b\n", "must hold a YAML mapping"),
    ],
)
def test_config_errors_name_the_key_before_any_work(capsys, tmp_path, yaml_text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    cache = tmp_path / "cache"
    code, _, err = run(capsys, "testbed", "build", "--config", str(cfg), "--cache_dir", str(cache))
    assert code == 2 and message in err
    assert not cache.exists()  # nothing was built


def test_flag_errors(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["testbed", "build", "--seed", "x"])
    assert "--seed" in capsys.readouterr().err
    code, _, err = run(capsys, "testbed", "build", "--workers", "0", "--cache_dir", str(tmp_path / "c"))
    assert code == 2 and "workers must be >= 1" in err
    code, _, err = run(capsys, "testbed", "build", "--variants", "-1", "--cache_dir", str(tmp_path / "c"))
    assert code == 2 and "variants >= 0" in err and not (tmp_path / "c").exists()
    code, _, err = run(capsys, "testbed", "build", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in err


def test_check_config_types():
    check_config(BuildArgs, {"cache_dir": None, "seed": 2, "force": True})
    with pytest.raises(ConfigError, match="'cache_dir' must be str or null"):
        check_config(BuildArgs, {"cache_dir": 3})


def test_yaml_env_sets_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ALIGNKIT_TEST_VAR", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("env:\n  ALIGNKIT_TEST_VAR: hello\nseed: 1\n")
    assert parse_config(BuildArgs, ["--config", str(cfg)]).seed == 1
    import os

    assert os.environ["ALIGNKIT_TEST_VAR"] == "hello"


def test_testbed_info_json_and_table(capsys, tiny_testbed):
    cache = str(tiny_testbed.root.parents[1])
    code, out, _ = run(capsys, "testbed", "info", "--profile", "tiny", "--cache_dir", cache, "--json")
    assert code == 0
    info = json.loads(out)
    assert set(info["models"]) >= {"small-base", "large-base", "small-instruct", "large-instruct"}
    for entry in info["models"].values():
        assert {"accuracy", "params", "cost_ratio"} <= set(entry)
    code, out, _ = run(capsys, "testbed", "info", "--profile", "tiny", "--cache_dir", cache)
    assert code == 0 and "small-instruct" in out and "entropy AUROC" in out and "a/0 refused" in out
    code, out, _ = run(capsys, "testbed", "build", "--profile", "tiny", "--cache_dir", cache, "--variants", "1", "--workers", "1")
    assert code == 0 and f"variant 1 ready: {tiny_testbed.root / 'variants' / 'seed1'}" in out


def test_info_without_build_says_how_to_build(capsys, tmp_path):
    code, _, err = run(capsys, "testbed", "info", "--profile", "tiny", "--seed", "9", "--cache_dir", str(tmp_path))
    assert code == 2 and "align testbed build --profile tiny --seed 9" in err


def test_config_file_for_the_testbed_is_valid():
    args = parse_config(BuildArgs, ["--config", "configs/testbed.yaml"])
    assert args.profile == "full"


def test_help_does_not_import_torch():
    code = "import sys, align.cli; align.cli.main(['--help']); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_every_documented_profile_is_accepted():
    for profile in ("full", "tiny", "tiny-bpe", "smollm2"):
        assert parse_config(BuildArgs, ["--profile", profile]).profile == profile
