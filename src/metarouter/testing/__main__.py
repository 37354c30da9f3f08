"""``python -m metarouter.testing [--host H] [--port P]``: run the bundled fake upstreams until Ctrl-C.

One server, every provider's wire format under its own path; it prints each provider's base URL and a
``providers:`` config section that points metarouter at them (what ``metarouter serve --demo`` does in-process).
"""

from __future__ import annotations

import argparse
import sys
import threading

import yaml

from .fake_providers import HANDLERS
from .fake_upstream import FAKE_KEYS_ENV, FakeUpstream, provider_config_for


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metarouter.testing", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9100, help="port to listen on (default 9100; 0: any free port)")
    p.add_argument("--note", default="", help='text put before every answer, e.g. "[fake {provider}] "')
    args = p.parse_args(argv)
    fake = FakeUpstream(HANDLERS, host=args.host, port=args.port, note=args.note).start()
    providers = provider_config_for(fake)
    print(f"fake upstreams on {fake.url}; base URLs:")
    for name, spec in providers.items():
        print(f"  {name:<10} {spec['base_url']}")
    keys = " ".join(f"{k}={v}" for k, v in FAKE_KEYS_ENV.items())
    print(f"\nconfig for metarouter (set the keys it names, any value: {keys}):\n")
    print(yaml.safe_dump({"providers": providers}, sort_keys=False))
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
