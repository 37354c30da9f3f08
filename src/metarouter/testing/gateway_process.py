"""Start the real ``metarouter serve`` in a subprocess, for end-to-end tests and benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    def __init__(self, config: dict[str, Any], data_dir: Path, env: dict[str, str] | None = None,
                 workers: int = 1, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.data_dir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {}), "METAROUTER_HOME": str(self.data_dir)}
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "server.log"
        self.api_key: str | None = None  # a key the caller created, the default of :meth:`generation`

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "metarouter.cli", *args, "--config", str(self.config_path),
             "--data-dir", str(self.data_dir)],
            env=self.env, capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"metarouter {' '.join(args)} failed: {out.stderr}")
        return out.stdout.strip()

    def generation(self, gen_id: str, key: str | None = None) -> dict[str, Any]:
        """The stored record of one request (``GET /api/v1/generation``) as ``key`` (default: ``api_key``) sees it;
        anything but a 200 fails with the status and body."""
        req = urllib.request.Request(f"{self.url}/api/v1/generation?{urllib.parse.urlencode({'id': gen_id})}",
                                     headers={"Authorization": f"Bearer {key or self.api_key}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())["data"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"GET /generation {gen_id}: HTTP {e.code}: {e.read().decode(errors='replace')}") \
                from None

    def create_key(self, label: str = "test", limit: float | None = None, rpm: int | None = None,
                   tpm: int | None = None) -> str:
        args = ["keys", "create", "--label", label]
        if limit is not None:
            args += ["--limit", str(limit)]
        if rpm is not None:
            args += ["--rpm", str(rpm)]
        if tpm is not None:
            args += ["--tpm", str(tpm)]
        return self.cli(*args).splitlines()[-1]

    def start(self, timeout: float = 30) -> "GatewayProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metarouter.cli", "serve", "--config", str(self.config_path), "--port",
             str(self.port), "--data-dir", str(self.data_dir), "--workers", str(self.workers),
             "--log-level", "warning"],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway did not become ready: {self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int | None = None, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        self._log.close()
        return code

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
