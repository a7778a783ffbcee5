"""``python -m nestrank ...``: the ``nestrank`` command line as a module."""

from nestrank.cli import main

if __name__ == "__main__":
    main()
