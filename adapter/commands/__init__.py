"""Commands whose work is more than a few lines of cli.py: each returns what the CLI prints."""
