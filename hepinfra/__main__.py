"""``python -m hepinfra`` entry point."""

from hepinfra.cli import entry

if __name__ == "__main__":
    entry()
