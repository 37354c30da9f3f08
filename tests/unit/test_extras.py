"""A backend configured without its optional package: a one-line error naming the extra to install, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The package is made unimportable the way Python itself reports a missing one (ModuleNotFoundError).
RUN = "import sys; sys.modules[{module!r}] = None; from metarouter.cli import main; sys.exit(main({argv!r}))"


PG = {"METAROUTER_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
REDIS = {"METAROUTER_REDIS_URL": "redis://127.0.0.1:1/0"}


@pytest.mark.parametrize("module,env,extra,command", [
    ("asyncpg", PG, "postgres", ["serve", "--port", "1"]),
    ("asyncpg", PG, "postgres", ["keys", "create", "--label", "x"]),
    ("redis", REDIS, "redis", ["serve", "--port", "1"]),
])
def test_a_missing_extra_is_named(tmp_path, module, env, extra, command):
    argv = [*command, "--data-dir", str(tmp_path)]
    out = subprocess.run([sys.executable, "-c", RUN.format(module=module, argv=argv)], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "METAROUTER_HOME": str(tmp_path), **env})
    assert out.returncode == 2, out.stderr
    assert f"pip install 'metarouter[{extra}]'" in out.stderr
    assert "Traceback" not in out.stderr
