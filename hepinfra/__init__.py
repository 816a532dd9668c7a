"""hepinfra: declarative provisioning for the hep.gg developer platform.

This module must stay import-light: ``hepinfra --version`` imports only this file and the CLI.
"""

__version__ = "0.1.0"


def _skip_httpx_cli() -> None:
    """httpx imports its own command-line client (rich and pygments: ~0.1 s of every run) only to export
    ``httpx.main``, which hepinfra never calls: a stand-in answers that import. Costs nothing here."""
    import sys

    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    import types

    stub = types.ModuleType("httpx._main")

    def main() -> None:
        raise RuntimeError("httpx's command-line client is not loaded inside hepinfra")

    stub.main = main  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = stub


_skip_httpx_cli()
