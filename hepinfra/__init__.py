"""hepinfra: declarative provisioning for the hep.gg developer platform.

This module must stay import-light: ``hepinfra --version`` imports only this file and the CLI.
"""

__version__ = "0.1.0"
