"""``tracerl runner --config FILE``: the [runner] table, its checks, and how it merges with the command line;
the cluster example configs parse."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tracerl.config import RunnerConfig, load_run_config
from tracerl.errors import ConfigError
from tracerl.runner.cli import add_arguments, with_config_file
from tracerl.runner.config_file import load_runner_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_file_values_fill_what_the_command_line_left_at_its_default(tmp_path: Path) -> None:
    cfg = tmp_path / "conf" / "runner.toml"
    cfg.parent.mkdir()
    cfg.write_text('[runner]\nagent = "a:b"\nstore = "sqlite:///x.db"\nworkers = 8\nmax-tokens = 32\n'
                   'app_dir = "agents"\nmode = ["train"]\n')  # fmt: skip
    args = with_config_file(parse("--config", str(cfg), "--lease", "7"))
    assert (args.agent, args.store, args.workers, args.max_tokens, args.mode) == ("a:b", "sqlite:///x.db", 8, 32,
                                                                                   ["train"])  # fmt: skip
    assert args.app_dir == str(tmp_path / "conf" / "agents")  # relative to the file
    assert args.lease == 7.0  # the command line wins
    assert with_config_file(parse("--config", str(cfg), "-n", "3")).workers == 3


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('[runner]\ntoken = "s3cret"\n', "TRACERL_TOKEN"),
        ('[runner]\nworkerz = 3\n', "unknown key 'workerz'.*known keys"),
        ('[runner]\nworkers = "8"\n', "workers .* must be a int, got '8'"),
        ('[runner]\nmode = ["training"]\n', "train/val/test"),
        ('agent = "a:b"\n', "no \\[runner\\] table"),
        ("[runner\n", "not valid TOML"),
    ],
)
def test_bad_files_are_refused_by_name(tmp_path: Path, body: str, match: str) -> None:
    cfg = tmp_path / "runner.toml"
    cfg.write_text(body)
    with pytest.raises(ConfigError, match=match):
        load_runner_file(cfg)


def test_agent_and_store_are_required_somewhere(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --agent and --store"):
        with_config_file(parse())
    with pytest.raises(ConfigError, match="does not exist"):
        with_config_file(parse("--config", str(tmp_path / "missing.toml")))


def test_the_cluster_examples_parse() -> None:
    trainer = load_run_config(EXAMPLES / "trainer.toml")
    assert trainer.runners.n == 0 and str(trainer.store.url).startswith("postgresql://")
    for name in ("runner.toml", "runner-ray.toml"):
        runner = load_runner_file(EXAMPLES / name)
        assert runner["store"] == trainer.store.url
        assert runner["gateway"] == f"http://{trainer.engine.host}:{trainer.engine.port}"


def test_runner_config_checks_ray_settings() -> None:
    assert RunnerConfig(n=2, ray="auto", actors=3).actors == 3
    with pytest.raises(ConfigError, match=r"needs runners\.ray"):
        RunnerConfig(n=2, actors=3)
    with pytest.raises(ConfigError, match="n = 0 starts no workers"):
        RunnerConfig(n=0, ray="auto")
    with pytest.raises(ConfigError, match="Ray address"):
        RunnerConfig(ray="")
