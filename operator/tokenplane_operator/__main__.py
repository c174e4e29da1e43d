"""`python -m tokenplane_operator`: the same as the `tokenplane` command."""

from tokenplane_operator.cli import main

main()
