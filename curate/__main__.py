"""``python -m curate`` entry point (same as the ``curate`` console script)."""
from cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
