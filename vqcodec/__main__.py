"""`python -m vqcodec` runs the command-line interface."""

from vqcodec.cli import main

main()
