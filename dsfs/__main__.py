"""`python -m dsfs ...`: the `dsfs` command (for a venv whose scripts folder is not on PATH)."""

from dsfs.cli import main

if __name__ == "__main__":
    main()
