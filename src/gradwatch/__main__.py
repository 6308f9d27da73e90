"""``python -m gradwatch``: the ``gradwatch`` command line."""

from gradwatch.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
