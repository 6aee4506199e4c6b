"""``python -m hybrid`` == ``hybrid``."""

from hybrid.cli import main

if __name__ == "__main__":
    main()
