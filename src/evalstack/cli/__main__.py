"""`python -m evalstack.cli …` runs the `evalstack` command (as tests and a venv-less shell call it)."""
import sys

from evalstack.cli.commands import main

sys.exit(main())
