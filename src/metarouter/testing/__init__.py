"""Test and benchmark helpers that ship with the package: fake upstreams speaking real wire formats."""
