"""``python -m hepinfra`` entry point."""

from hepinfra.cli import main

if __name__ == "__main__":
    main()
