"""`python -m ui`: the `talaria` command line (how `talaria up` starts its services)."""

from ui.cli import main

main()
