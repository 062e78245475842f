"""`python -m evalstack.cli …` = the `evalstack` command (works without the installed console script)."""
import sys

from evalstack.cli.commands import main

sys.exit(main())
