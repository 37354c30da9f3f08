"""The ``metarouter`` command line as a user meets it: help, tables, pipes, and ``route`` seeing the config."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import yaml

from metarouter.catalog.providers import default_providers
from metarouter.cli import build_parser, main


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metarouter.cli", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    """``metarouter models | head``: the pipe's reader is gone before the table is written."""
    read, write = os.pipe()
    os.close(read)  # every write now fails with EPIPE, as when `head` has exited
    try:
        p = subprocess.run([sys.executable, "-m", "metarouter.cli", "models"], stdout=write, stderr=subprocess.PIPE,
                           text=True, timeout=60)
    finally:
        os.close(write)
    assert "Traceback" not in p.stderr and "BrokenPipeError" not in p.stderr, p.stderr
    assert p.returncode == 1


def test_help_is_plain_text_and_names_every_command():
    out = run_cli("--help").stdout
    assert "``" not in out
    for cmd in ("serve", "models", "keys", "credits", "route", "train", "eval"):
        assert cmd in out
    assert "--demo" in out


def test_every_option_has_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"--host", "--port", "--workers", "--demo"} <= {o for a in commands["serve"]._actions for o in a.option_strings}
    for name in ("serve", "models", "credits", "route"):
        for action in commands[name]._actions:
            assert action.help, f"metarouter {name} {'/'.join(action.option_strings) or action.dest} has no help"


HEADER = ["id", "label", "usage", "limit", "reset", "expires", "status"]


def test_keys_list_has_a_header(tmp_path, capsys):
    assert main(["keys", "list", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == HEADER
    assert main(["keys", "create", "--label", "laptop", "--limit", "5", "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--data-dir", str(tmp_path)]) == 0
    head, row = capsys.readouterr().out.splitlines()
    assert head.split() == HEADER
    assert row.split()[1:] == ["laptop", "$0.000000", "$5", "-", "-", "active"]


def test_keys_with_a_reset_and_an_expiry_are_created_updated_and_listed(tmp_path, capsys):
    d = ["--data-dir", str(tmp_path)]
    assert main(["keys", "create", "--label", "team", "--limit", "2", "--limit-reset", "daily",
                 "--expires-at", "2099-01-31T23:59:59Z", *d]) == 0
    capsys.readouterr()
    assert main(["keys", "list", *d]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    public_id = row[0]
    assert row[1:] == ["team", "$0.000000", "$2", "daily", "2099-01-31T23:59:59Z", "active"]
    assert main(["keys", "update", public_id, "--limit-reset", "weekly", "--expires-at", "2020-01-01T00:00:00Z",
                 "--limit", "3", *d]) == 0
    assert "expired" in capsys.readouterr().err
    assert main(["keys", "list", *d]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1:] == [
        "team", "$0.000000", "$3", "weekly", "2020-01-01T00:00:00Z", "expired"]
    assert main(["keys", "update", public_id, "--limit-reset", "none", "--expires-at", "none", "--limit", "none",
                 *d]) == 0
    capsys.readouterr()
    assert main(["keys", "list", *d]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1:] == ["team", "$0.000000", "no", "limit", "-", "-",
                                                                    "active"]
    assert main(["keys", "update", "000000000000", "--label", "x", *d]) == 1
    assert main(["keys", "update", public_id, *d]) == 2  # nothing to change
    for bad in (["--expires-at", "2099-01-31T23:59:59+02:00"], ["--limit-reset", "hourly"]):
        with pytest.raises(SystemExit) as exit_:
            main(["keys", "update", public_id, *bad, *d])
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "UTC" in err and "hourly" in err


@pytest.fixture
def only_openai(monkeypatch, tmp_path):
    """A config whose only available provider is openai, with a model added to the catalog."""
    for spec in default_providers():
        monkeypatch.delenv(spec.key_env, raising=False)
    monkeypatch.setenv("MR_TEST_OPENAI_KEY", "sk-test")
    cfg = tmp_path / "metarouter.yaml"
    cfg.write_text(yaml.safe_dump({
        "providers": {"openai": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "MR_TEST_OPENAI_KEY"}},
        "models": {"add": {"local/tiny-chat": {"provider": "openai", "native_model": "tiny", "context_length": 8192,
                                               "input_usd_per_1m": 0, "output_usd_per_1m": 0}}},
    }))
    return cfg


def test_route_sees_the_configs_models_and_availability(only_openai, capsys):
    assert main(["route", "Write a haiku about the sea", "--json", "--config", str(only_openai)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"].startswith(("openai/", "local/"))
    assert {c["model_id"].split("/")[0] for c in d["ranked"]} <= {"openai", "local"}
    assert "local/tiny-chat" in [c["model_id"] for c in d["ranked"]]
    assert main(["route", "hello", "--json", "--models", "local/*", "--config", str(only_openai)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "local/tiny-chat"


def test_route_without_any_key_says_it_uses_the_whole_catalog(monkeypatch, capsys):
    for spec in default_providers():
        monkeypatch.delenv(spec.key_env, raising=False)
    assert main(["route", "hello", "--json", "--models", "anthropic/*"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["model"].startswith("anthropic/") and "whole catalog" in out.err
