"""``python -m kvcodec`` runs the command line."""

from kvcodec.cli import main

main()
